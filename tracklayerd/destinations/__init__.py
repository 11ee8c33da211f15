"""Destinations: one module per platform behind one interface, found through the registry."""
