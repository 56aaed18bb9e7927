//! Where a spoke's model runs: the CPU (the engine's own kernels) or a CUDA device
//! (candle's CUDA tensors, through [`crate::candle_path`]), and what that device's memory
//! really is.
//!
//! A CUDA device needs a build with the `cuda` feature (`scripts/build-cuda`) and a
//! driver. Without either, [`Placement::open`] fails with a sentence that says which is
//! missing; nothing here panics on a machine without a GPU.

use crate::error::{Error, Result};

/// A spoke's `device` setting: `"cpu"` or `"cuda:N"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Cpu => f.write_str("cpu"),
            Placement::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for Placement {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Device(format!("device {s:?}: use \"cpu\" or \"cuda:N\""));
        match s {
            "cpu" => Ok(Placement::Cpu),
            _ => {
                let i = s.strip_prefix("cuda:").ok_or_else(bad)?;
                i.parse().map(Placement::Cuda).map_err(|_| bad())
            }
        }
    }
}

/// Free and total bytes of a device's memory, as its driver reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free: u64,
    pub total: u64,
}

impl Placement {
    /// The candle device to run on: `None` for the CPU (the engine's own kernels run
    /// there), or an opened CUDA device.
    pub fn open(self) -> Result<Option<candle_core::Device>> {
        match self {
            Placement::Cpu => Ok(None),
            Placement::Cuda(i) => cuda::open(i).map(Some),
        }
    }

    /// The device's memory: `None` for the CPU (its partitions are the configured figures).
    pub fn memory(self) -> Result<Option<DeviceMemory>> {
        match self {
            Placement::Cpu => Ok(None),
            Placement::Cuda(i) => cuda::memory(i).map(Some),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::DeviceMemory;
    use crate::error::{Error, Result};
    use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaContext};

    /// Starts the driver and checks that device `i` exists, with an error that says
    /// what is missing: the driver itself (the build's stub answered), or the device.
    fn check(i: usize) -> Result<()> {
        if let Err(e) = result::init() {
            let missing =
                matches!(e.0, sys::cudaError_enum::CUDA_ERROR_STUB_LIBRARY | sys::cudaError_enum::CUDA_ERROR_NO_DEVICE);
            return Err(Error::Device(match missing {
                true => format!("no CUDA driver: {e:?} (cuda:{i} needs an NVIDIA GPU and its driver)"),
                false => format!("the CUDA driver failed to start: {e:?}"),
            }));
        }
        let count = result::device::get_count().map_err(|e| Error::Device(format!("counting CUDA devices: {e:?}")))?;
        if i >= count.max(0) as usize {
            return Err(Error::Device(format!("cuda:{i} does not exist: this machine has {count} CUDA device(s)")));
        }
        Ok(())
    }

    pub fn open(i: usize) -> Result<candle_core::Device> {
        check(i)?;
        candle_core::Device::new_cuda(i).map_err(|e| Error::Device(format!("opening cuda:{i}: {e}")))
    }

    pub fn memory(i: usize) -> Result<DeviceMemory> {
        check(i)?;
        let ctx = CudaContext::new(i).map_err(|e| Error::Device(format!("cuda:{i}: {e:?}")))?;
        let (free, total) = ctx.mem_get_info().map_err(|e| Error::Device(format!("cuda:{i} memory: {e:?}")))?;
        Ok(DeviceMemory { free: free as u64, total: total as u64 })
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::DeviceMemory;
    use crate::error::{Error, Result};

    fn not_built(i: usize) -> Error {
        Error::Device(format!(
            "cuda:{i}: this nave was built without CUDA support (scripts/build-cuda builds one with it)"
        ))
    }

    pub fn open(i: usize) -> Result<candle_core::Device> {
        Err(not_built(i))
    }

    pub fn memory(i: usize) -> Result<DeviceMemory> {
        Err(not_built(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_settings_parse_or_say_what_is_accepted() {
        assert_eq!("cpu".parse::<Placement>().ok(), Some(Placement::Cpu));
        assert_eq!("cuda:1".parse::<Placement>().ok(), Some(Placement::Cuda(1)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let e = bad.parse::<Placement>().expect_err(bad).to_string();
            assert!(e.contains("\"cpu\" or \"cuda:N\""), "{bad}: {e}");
        }
        assert_eq!(Placement::Cuda(3).to_string(), "cuda:3");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_cuda_with_the_way_to_get_it() {
        let e = Placement::Cuda(0).open().expect_err("no CUDA in this build").to_string();
        assert!(e.contains("scripts/build-cuda"), "{e}");
        assert!(Placement::Cpu.open().expect("the CPU always opens").is_none());
        assert!(Placement::Cpu.memory().expect("the CPU has no device memory").is_none());
    }
}
