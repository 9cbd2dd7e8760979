"""Probes: the experiments each rung runs, as plain functions over the models and measure layers (no pytest).

One module per family of claims; each probe computes what a rung's gates, prefilters and traps check, reusing the
metrics of `pytest_ladder.measure` (never recomputing one it already has):

    spectral         G0 (free orthogonal regauge), G2 (Tucker / HOSVD across layer x expert x hidden)
    quant_weights    G1.0' (learned gauge -> quantize -> inverse), R2 (SRHT vs Haar rotation, same quantizer)
    budget           the impact ladder's budget table: bytes per line of the model, R rungs' GB deltas
    lowrank          G4 (static low-rank input basis)
    routes           G3, G6, G7 (per-route effective weights, low-rank router, pair cache)
    deflation        G5 (directions after deflation)
    expert_outputs   G10 (quantized routed expert outputs)
    attention        G10-scan, G10.5 (decaying scan, smooth + sparse split)
    rotorquant       R1 (SRHT + INT2/INT1 experts)
    expert_weights   any expert-weight compressor (pytest_ladder.compressors) through the five gates; R1 runs on it
"""
