"""Typed errors the memory manager raises; the UI layer turns them into clear messages."""


class MemoryManagerError(Exception):
    """Base class: something about device memory stopped a request."""


class ModelTooLarge(MemoryManagerError):
    """The model (plus its working memory) cannot fit the budget even with every other model evicted."""


class DeviceBusy(MemoryManagerError):
    """Room could not be made in time because the memory is held by models that are in use."""


class ModelInUse(MemoryManagerError):
    """An explicit unload was asked for a model that is serving a request right now."""


class DeviceOutOfMemory(MemoryManagerError):
    """The device ran out of memory, and freeing every idle model and retrying did not help."""
