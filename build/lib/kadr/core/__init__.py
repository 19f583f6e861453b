"""The shared core: photo collections, safe decoding, model specs, the batch runner, stores.

It knows nothing of camera traps or hotels.
"""
