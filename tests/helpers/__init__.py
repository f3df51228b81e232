"""Shared test helpers, imported as `helpers.<module>` (pytest puts tests/ on the path through its conftest.py).

  cases          the table of named layer configurations that drives the generic tests, and tolerances
  compat_cases   the compatibility cases (torch's layers vs ours); `python tests/helpers/compat_cases.py`
                 writes docs/compatibility.md
  ranks          launching a worker script on several gloo ranks on 127.0.0.1
  fault_worker   one rank of a distributed fault scenario (robustness/test_faults.py)
  sync_worker    one rank of a SyncBatchNorm scenario (nn/test_sync.py)
  lab_quick      runs a lab experiment once per session at quick scale (the tests in lab/)
"""
