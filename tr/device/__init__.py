"""Device tuning and the model: loading (`model`), kernel choices (`kernels`), the cost calibration
(`calibrate`) and primed matrices (`primed`). Depends on the method core in `tr`; nothing there depends
on this package."""
