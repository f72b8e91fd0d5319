"""Studies: a training history (shared phases → directions → final phase forked into arms) over seeds."""
