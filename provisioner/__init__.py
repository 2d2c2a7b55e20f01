"""EDC HTTP provisioning: the routes a provider's connector calls, the callbacks we send back, the reaper.

The wire protocol is ``../shared/EDC-PROVISIONING.md``; the rules (idempotency, derivation of secrets,
deprovisioning) live in ``core.provisioning``.
"""
