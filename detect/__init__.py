"""Detection layer: disclosure signals, spike detectors, incidents, alerts and sinks."""
