//! vfio-user client bus (host-process mode). Being written.
