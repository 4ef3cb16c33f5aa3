"""Faults: the catalogue of fault kinds (what each does, its parameters) and the timeline that
puts faults on each run's clock and tells the engine what they do at each moment."""
