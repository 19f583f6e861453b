"""Hotel photos: profile a collection, caption it CLIP-Interrogator style, group it into themes."""
