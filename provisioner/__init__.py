"""EDC HTTP provisioning: the routes a provider's connector calls (built in a later issue)."""
