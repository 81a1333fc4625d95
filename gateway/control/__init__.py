"""Local control: pause and resume, a site power limit shared among transactions, and charging
derated by temperature (docs/local-control.md).

- `settings`: the `[site]`, `[control]` and `[derating]` configuration models;
- `decide`: the pure decisions (fair share, the derating hysteresis, the profiles' payloads);
- `engine`: the session observer that learns transactions and temperatures from the exchanges and
  sends the charging profiles (import it from `gateway.control.engine`);
- `commands`: the operator's pause, resume and limits, a mixin of the engine;
- `state`: the per-charger state and what of it survives a restart.
"""
