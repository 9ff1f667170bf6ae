"""The embedded defaults: each real part started locally from a wheel when no address is configured."""
