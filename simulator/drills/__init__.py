"""Drills: inject faults on a timeline, watch the alerting, and score it.

``file`` reads a drill file, ``scoring`` judges what was seen (pure), ``report`` writes the
scorecard, ``runner`` starts or reaches the stack and runs the drill, ``stack`` starts real
trainsim, Prometheus and Alertmanager processes, ``profile`` derives the fast profile of the
shipped rules and server configs, ``offline`` judges a drill with ``promtool test rules`` at
the real intervals, starting nothing.
"""
