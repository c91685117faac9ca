"""3D lift: a stretch of the map to a Gaussian-splat scene (frames, splats, trajectory, outputs)."""
