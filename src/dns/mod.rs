//! Caching DNS proxy that answers from the address it was asked on (the VIP).
