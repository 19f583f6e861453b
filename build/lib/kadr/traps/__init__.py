"""Camera traps: detect and count animals, name species zero-shot, form registrations."""
