import Foundation
#if canImport(Darwin)
import Darwin
#endif

enum Platform {
    static var name: String {
        #if os(macOS)
        return "macOS"
        #elseif os(iOS)
        return "iOS"
        #elseif os(Linux)
        return "Linux"
        #elseif os(Windows)
        return "Windows"
        #else
        return "unknown"
        #endif
    }

    /// sysctl string values (Darwin); nil elsewhere or on failure.
    static func sysctlString(_ name: String) -> String? {
        #if canImport(Darwin)
        var size = 0
        guard sysctlbyname(name, nil, &size, nil, 0) == 0, size > 0 else { return nil }
        var buf = [CChar](repeating: 0, count: size)
        guard sysctlbyname(name, &buf, &size, nil, 0) == 0 else { return nil }
        return String(cString: buf)
        #else
        return nil
        #endif
    }

    static var osBuild: String? { sysctlString("kern.osversion") }

    static var chip: String? {
        #if canImport(Darwin)
        return sysctlString("machdep.cpu.brand_string")
        #else
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("model name") {
            if let colon = line.firstIndex(of: ":") {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
        #endif
    }

    static var unavailableReason: String {
        "Core ML is not available on this platform (\(name))"
    }
}

/// Whether the deterministic test runtime serves model calls: the
/// environment variable COREML_BRIDGE_TEST_RUNTIME=1, read at every call.
public func testRuntimeEnabled() -> Bool {
    guard let v = getenv("COREML_BRIDGE_TEST_RUNTIME") else { return false }
    return String(cString: v) == "1"
}
