#include <cuda_runtime.h>

#include "xcpipe/cuda/device.h"

namespace xcpipe::cuda {
namespace {

Status CudaError(cudaError_t err, const char* what) {
  return UnavailableError(std::string(what) + ": CUDA error " + std::to_string(static_cast<int>(err)) + " (" +
                          cudaGetErrorString(err) + ")");
}

__global__ void FillKernel(float* out, int n, float scale) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = static_cast<float>(i) * scale;
}

}  // namespace

StatusOr<std::vector<CudaDevice>> ProbeCudaDevices() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls see a clean state
    return CudaError(err, "cudaGetDeviceCount");
  }
  if (count == 0) return UnavailableError("cudaGetDeviceCount: no CUDA devices");
  std::vector<CudaDevice> devices;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if ((err = cudaGetDeviceProperties(&prop, i)) != cudaSuccess) return CudaError(err, "cudaGetDeviceProperties");
    if ((err = cudaSetDevice(i)) != cudaSuccess) return CudaError(err, "cudaSetDevice");
    size_t free_bytes = 0, total_bytes = 0;
    if ((err = cudaMemGetInfo(&free_bytes, &total_bytes)) != cudaSuccess) return CudaError(err, "cudaMemGetInfo");
    devices.push_back(CudaDevice{i, prop.name, total_bytes, free_bytes, prop.major, prop.minor});
  }
  return devices;
}

StatusOr<CudaDevice> ProbeCudaDevice(int index) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return CudaError(err, "cudaGetDeviceCount");
  }
  if (index < 0 || index >= count) {
    return UnavailableError("cuda:" + std::to_string(index) + " is not among the " + std::to_string(count) +
                            " CUDA device(s) visible");
  }
  cudaDeviceProp prop{};
  if ((err = cudaGetDeviceProperties(&prop, index)) != cudaSuccess) return CudaError(err, "cudaGetDeviceProperties");
  if ((err = cudaSetDevice(index)) != cudaSuccess) return CudaError(err, "cudaSetDevice");
  size_t free_bytes = 0, total_bytes = 0;
  if ((err = cudaMemGetInfo(&free_bytes, &total_bytes)) != cudaSuccess) return CudaError(err, "cudaMemGetInfo");
  return CudaDevice{index, prop.name, total_bytes, free_bytes, prop.major, prop.minor};
}

StatusOr<DeviceMemory> QueryDeviceMemory(int device) {
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return CudaError(err, "cudaSetDevice");
  }
  size_t free_bytes = 0, total_bytes = 0;
  if ((err = cudaMemGetInfo(&free_bytes, &total_bytes)) != cudaSuccess) {
    cudaGetLastError();
    return CudaError(err, "cudaMemGetInfo");
  }
  return DeviceMemory{free_bytes, total_bytes};
}

StatusOr<std::vector<float>> RunFillKernel(int device, int n, float scale) {
  if (n <= 0) return InvalidArgumentError("RunFillKernel: n must be positive, got " + std::to_string(n));
  cudaError_t err;
  if ((err = cudaSetDevice(device)) != cudaSuccess) return CudaError(err, "cudaSetDevice");
  float* buffer = nullptr;
  if ((err = cudaMalloc(&buffer, sizeof(float) * n)) != cudaSuccess) return CudaError(err, "cudaMalloc");
  FillKernel<<<(n + 255) / 256, 256>>>(buffer, n, scale);
  std::vector<float> host(n);
  err = cudaMemcpy(host.data(), buffer, sizeof(float) * n, cudaMemcpyDeviceToHost);
  cudaFree(buffer);
  if (err != cudaSuccess) return CudaError(err, "cudaMemcpy");
  return host;
}

StatusOr<std::shared_ptr<void>> RecordComputeDone(int device) {
  cudaError_t err;
  if ((err = cudaSetDevice(device)) != cudaSuccess) return CudaError(err, "cudaSetDevice");
  cudaEvent_t event = nullptr;
  if ((err = cudaEventCreateWithFlags(&event, cudaEventDisableTiming)) != cudaSuccess) {
    return CudaError(err, "cudaEventCreate");
  }
  std::shared_ptr<void> owned(event, [](void* e) { cudaEventDestroy(static_cast<cudaEvent_t>(e)); });
  if ((err = cudaEventRecord(event, cudaStreamLegacy)) != cudaSuccess) return CudaError(err, "cudaEventRecord");
  return owned;
}

StatusOr<uint64_t> MeasureCopyBandwidth(int device, size_t bytes) {
  cudaError_t err;
  if ((err = cudaSetDevice(device)) != cudaSuccess) return CudaError(err, "cudaSetDevice");
  void* a = nullptr;
  void* b = nullptr;
  if ((err = cudaMalloc(&a, bytes)) != cudaSuccess) return CudaError(err, "cudaMalloc");
  if ((err = cudaMalloc(&b, bytes)) != cudaSuccess) {
    cudaFree(a);
    return CudaError(err, "cudaMalloc");
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  float ms = 0;
  err = cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);  // warm-up (first touch)
  if (err == cudaSuccess) err = cudaEventRecord(start, cudaStreamLegacy);
  for (int i = 0; err == cudaSuccess && i < 5; ++i) err = cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, cudaStreamLegacy);
  if (err == cudaSuccess) err = cudaEventRecord(stop, cudaStreamLegacy);
  if (err == cudaSuccess) err = cudaEventSynchronize(stop);
  if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  if (err != cudaSuccess) return CudaError(err, "timing a device-to-device copy");
  if (ms <= 0) return UnavailableError("device-to-device copy timed at 0 ms");
  // Each copy reads and writes `bytes`.
  return static_cast<uint64_t>(2.0 * 5.0 * static_cast<double>(bytes) / (ms / 1e3));
}

int BuiltRuntimeVersion() { return CUDART_VERSION; }

}  // namespace xcpipe::cuda
