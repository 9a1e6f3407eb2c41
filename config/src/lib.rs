//! shoal-config
