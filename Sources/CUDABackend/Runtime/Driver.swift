#if canImport(Glibc)
import Glibc
#endif

/// A device address (CUdeviceptr).
public typealias DevicePointer = UInt64
/// CUcontext, CUstream, CUmodule, CUfunction, CUevent: opaque handles.
typealias Handle = OpaquePointer

/// The CUDA driver API, bound at run time from libcuda.so.1 (the library the NVIDIA driver installs).
final class Driver {
    typealias Result = Int32
    let library: DynamicLibrary

    let cuInit: @convention(c) (UInt32) -> Result
    let cuDriverGetVersion: @convention(c) (UnsafeMutablePointer<Int32>) -> Result
    let cuDeviceGetCount: @convention(c) (UnsafeMutablePointer<Int32>) -> Result
    let cuDeviceGet: @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Result
    let cuDeviceGetName: @convention(c) (UnsafeMutablePointer<CChar>, Int32, Int32) -> Result
    let cuDeviceGetAttribute: @convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> Result
    let cuDeviceTotalMem: @convention(c) (UnsafeMutablePointer<Int>, Int32) -> Result
    let cuDevicePrimaryCtxRetain: @convention(c) (UnsafeMutablePointer<Handle?>, Int32) -> Result
    let cuCtxSetCurrent: @convention(c) (Handle?) -> Result
    let cuCtxGetCurrent: @convention(c) (UnsafeMutablePointer<Handle?>) -> Result
    let cuStreamCreate: @convention(c) (UnsafeMutablePointer<Handle?>, UInt32) -> Result
    let cuStreamSynchronize: @convention(c) (Handle?) -> Result
    let cuMemAlloc: @convention(c) (UnsafeMutablePointer<DevicePointer>, Int) -> Result
    let cuMemFree: @convention(c) (DevicePointer) -> Result
    let cuMemGetInfo: @convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Result
    let cuMemcpyHtoDAsync: @convention(c) (DevicePointer, UnsafeRawPointer?, Int, Handle?) -> Result
    let cuMemcpyDtoHAsync: @convention(c) (UnsafeMutableRawPointer?, DevicePointer, Int, Handle?) -> Result
    let cuMemcpyDtoDAsync: @convention(c) (DevicePointer, DevicePointer, Int, Handle?) -> Result
    let cuMemsetD8Async: @convention(c) (DevicePointer, UInt8, Int, Handle?) -> Result
    let cuMemsetD32Async: @convention(c) (DevicePointer, UInt32, Int, Handle?) -> Result
    let cuModuleLoadData: @convention(c) (UnsafeMutablePointer<Handle?>, UnsafeRawPointer?) -> Result
    let cuModuleGetFunction: @convention(c) (UnsafeMutablePointer<Handle?>, Handle?, UnsafePointer<CChar>) -> Result
    let cuFuncSetAttribute: @convention(c) (Handle?, Int32, Int32) -> Result
    let cuFuncGetAttribute: @convention(c) (UnsafeMutablePointer<Int32>, Int32, Handle?) -> Result
    let cuLaunchKernel: @convention(c) (Handle?, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, Handle?,
                                        UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                                        UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Result
    let cuGetErrorString: @convention(c) (Result, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Result
    let cuGetErrorName: @convention(c) (Result, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Result
    let cuEventCreate: @convention(c) (UnsafeMutablePointer<Handle?>, UInt32) -> Result
    let cuEventRecord: @convention(c) (Handle?, Handle?) -> Result
    let cuEventSynchronize: @convention(c) (Handle?) -> Result
    let cuEventElapsedTime: @convention(c) (UnsafeMutablePointer<Float>, Handle?, Handle?) -> Result
    let cuEventDestroy: @convention(c) (Handle?) -> Result
    /// Makes a stream wait for an event recorded on another (NCCL's stream and the compute stream).
    let cuStreamWaitEvent: @convention(c) (Handle?, Handle?, UInt32) -> Result
    /// Blocks of a kernel that fit on one multiprocessor (for the resource report; optional).
    let cuOccupancyMaxActiveBlocksPerMultiprocessor: (@convention(c) (UnsafeMutablePointer<Int32>, Handle?, Int32, Int) -> Result)?

    // Device attributes (CUdevice_attribute).
    static let attrMultiprocessorCount: Int32 = 16
    static let attrComputeCapabilityMajor: Int32 = 75
    static let attrComputeCapabilityMinor: Int32 = 76
    static let attrMaxSharedMemoryPerBlockOptin: Int32 = 97
    static let attrL2CacheSize: Int32 = 38
    // Function attributes (CUfunction_attribute).
    static let funcAttrNumRegs: Int32 = 4
    static let funcAttrLocalSizeBytes: Int32 = 3
    static let funcAttrMaxDynamicSharedSize: Int32 = 8
    static let errorOutOfMemory: Result = 2

    init() throws {
        let (lib, errors) = DynamicLibrary.open(["libcuda.so.1", "libcuda.so"])
        guard let lib else {
            throw CUDAError("libcuda.so.1 not found: no NVIDIA driver on this machine"
                            + (errors.isEmpty ? "" : " (dlopen: \(errors[0]))"))
        }
        library = lib
        cuInit = try lib.symbol("cuInit")
        cuDriverGetVersion = try lib.symbol("cuDriverGetVersion")
        cuDeviceGetCount = try lib.symbol("cuDeviceGetCount")
        cuDeviceGet = try lib.symbol("cuDeviceGet")
        cuDeviceGetName = try lib.symbol("cuDeviceGetName")
        cuDeviceGetAttribute = try lib.symbol("cuDeviceGetAttribute")
        cuDeviceTotalMem = try lib.symbol("cuDeviceTotalMem_v2")
        cuDevicePrimaryCtxRetain = try lib.symbol("cuDevicePrimaryCtxRetain")
        cuCtxSetCurrent = try lib.symbol("cuCtxSetCurrent")
        cuCtxGetCurrent = try lib.symbol("cuCtxGetCurrent")
        cuStreamCreate = try lib.symbol("cuStreamCreate")
        cuStreamSynchronize = try lib.symbol("cuStreamSynchronize")
        cuMemAlloc = try lib.symbol("cuMemAlloc_v2")
        cuMemFree = try lib.symbol("cuMemFree_v2")
        cuMemGetInfo = try lib.symbol("cuMemGetInfo_v2")
        cuMemcpyHtoDAsync = try lib.symbol("cuMemcpyHtoDAsync_v2")
        cuMemcpyDtoHAsync = try lib.symbol("cuMemcpyDtoHAsync_v2")
        cuMemcpyDtoDAsync = try lib.symbol("cuMemcpyDtoDAsync_v2")
        cuMemsetD8Async = try lib.symbol("cuMemsetD8Async")
        cuMemsetD32Async = try lib.symbol("cuMemsetD32Async")
        cuModuleLoadData = try lib.symbol("cuModuleLoadData")
        cuModuleGetFunction = try lib.symbol("cuModuleGetFunction")
        cuFuncSetAttribute = try lib.symbol("cuFuncSetAttribute")
        cuFuncGetAttribute = try lib.symbol("cuFuncGetAttribute")
        cuLaunchKernel = try lib.symbol("cuLaunchKernel")
        cuGetErrorString = try lib.symbol("cuGetErrorString")
        cuGetErrorName = try lib.symbol("cuGetErrorName")
        cuEventCreate = try lib.symbol("cuEventCreate")
        cuEventRecord = try lib.symbol("cuEventRecord")
        cuEventSynchronize = try lib.symbol("cuEventSynchronize")
        cuEventElapsedTime = try lib.optionalSymbol("cuEventElapsedTime_v2")
            ?? lib.symbol("cuEventElapsedTime")
        cuEventDestroy = try lib.symbol("cuEventDestroy_v2")
        cuStreamWaitEvent = try lib.symbol("cuStreamWaitEvent")
        cuOccupancyMaxActiveBlocksPerMultiprocessor = lib.optionalSymbol("cuOccupancyMaxActiveBlocksPerMultiprocessor")
    }

    /// "CUDA_ERROR_OUT_OF_MEMORY (out of memory)".
    func describe(_ r: Result) -> String {
        var name: UnsafePointer<CChar>? = nil, text: UnsafePointer<CChar>? = nil
        _ = cuGetErrorName(r, &name)
        _ = cuGetErrorString(r, &text)
        let n = name.map { String(cString: $0) } ?? "CUresult \(r)"
        return text.map { "\(n) (\(String(cString: $0)))" } ?? n
    }

    /// Throws a CUDAError naming the function when `r` is not CUDA_SUCCESS.
    @inline(__always)
    func check(_ r: Result, _ function: @autoclosure () -> String) throws {
        if r != 0 { throw CUDAError("CUDA driver: \(function()) failed: \(describe(r))") }
    }

    /// For the non-throwing Backend methods: a failed call ends the program with the same message.
    @inline(__always)
    func must(_ r: Result, _ function: @autoclosure () -> String) {
        if r != 0 { fatalError("CUDA driver: \(function()) failed: \(describe(r))") }
    }
}
