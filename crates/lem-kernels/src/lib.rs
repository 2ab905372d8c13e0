//! lem-kernels
