"""What users run beside the apps, installed as ``omnirad_fl.simulations``.

- Tools: ``sim`` (``omnirad-sim``), ``sweep``, ``report``, ``side_by_side``, ``rounds_to_target``,
  ``compare_runs``, ``central_baselines`` and ``references`` (pooled and local-only twins),
  ``demo`` (``make demo``), ``deploy_demo``, ``config_docs``, ``partition_plot``, ``study_files``
  and ``dicom_files`` (files in public formats, for checks without real data).
- Harness: ``flower_local`` (a loopback simulation SuperLink), ``local_federation`` (a deployed
  federation on one machine), ``load_test``, ``in_process`` (a whole federation in one process,
  no SuperLink); the tools, the studies and the tests run federations with them.
- Studies and benchmarks behind the docs' numbers live in ``simulations/studies/``: kept and
  runnable by path, not installed.
"""
