"""What every layer shares: atomic file writes and safe tensor loading (:mod:`.files`) and progress bars
(:mod:`.progress`). Depends on nothing else in the package."""
