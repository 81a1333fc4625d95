"""What each charger says about itself (1.6 configuration keys, the 2.x device model), as pure
functions and small state machines: no I/O, no clock (times are passed in). The service that reads,
keeps and sets them is gateway/mirror.py; the store keeps them (adapters/sqlite_store.py)."""
