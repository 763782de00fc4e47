"""The process ptm runs in: files written whole, and the tuning the entry points switch on."""
