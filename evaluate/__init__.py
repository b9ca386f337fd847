"""Protocols, metrics and benchmarks on real data: LFW 10-fold, open-set identification,
calibration, clustering metrics, PFE evaluations, speed. Imports the runtime (``sdk``) only."""
