//! Address management (filled by the IPAM work).
