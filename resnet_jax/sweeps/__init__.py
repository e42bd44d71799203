"""Ablations: sweeps over configs (``run``), their report (``report``, ``plots``) and Fig. 7
layer-response analysis (``analysis``).

- ``grid``: sweep configs -> ordered members (``load_sweep``, ``Sweep.members``).
- ``run``: ``run_sweep(sweep, workdir)``; ``resnet-jax sweep``.
- ``collect``: read a sweep directory back.
- ``report``: ``write_report(dir)`` -> report.md + PNGs; ``resnet-jax report``.
- ``analysis``: per-3x3-layer response std of a trained model; ``resnet-jax analyze``.

Submodules are imported on demand so that ``import resnet_jax`` stays light.
"""
