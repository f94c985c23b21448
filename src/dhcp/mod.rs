//! DHCPv4 server (RFC 2131/2132): socket loop, pure handler, allocator, options.
