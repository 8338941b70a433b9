"""Write-back: a new channel into every image and level of a plate, crash-safe (plan, pixels, protocol, journal, resume)."""
