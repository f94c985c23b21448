//! Event hooks: per-hook ordered delivery to scripts, webhooks and the built-in VIP manager.
