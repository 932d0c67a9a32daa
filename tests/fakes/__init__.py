"""Real components made small: tiny models built from configs, and local servers."""
