"""`make demo`: the main job, shown on a simulated network on loopback."""
