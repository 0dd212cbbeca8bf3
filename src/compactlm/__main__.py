from .allocator import entry

entry()
