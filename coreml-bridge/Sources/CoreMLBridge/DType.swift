import Foundation

/// Mirrors `CoremlDType` in coreml_bridge.h.
public enum DType: Int32, CaseIterable, Sendable {
    case f32 = 1
    case f16 = 2
    case f64 = 3
    case i32 = 4
    case i8 = 5
    /// Outputs only (Int64 scalar features).
    case i64 = 6

    public var size: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16: return 2
        case .f64, .i64: return 8
        case .i8: return 1
        }
    }

    public var name: String {
        switch self {
        case .f32: return "f32"
        case .f16: return "f16"
        case .f64: return "f64"
        case .i32: return "i32"
        case .i8: return "i8"
        case .i64: return "i64"
        }
    }

    public init?(name: String) {
        guard let d = DType.allCases.first(where: { $0.name == name }) else { return nil }
        self = d
    }

    /// `MLMultiArrayDataType` raw values (they are stable, documented
    /// NS_ENUM values: 0x10000 | bits for floats, 0x20000 | bits for ints).
    public var multiArrayRawValue: Int? {
        switch self {
        case .f32: return 0x10000 | 32
        case .f16: return 0x10000 | 16
        case .f64: return 0x10000 | 64
        case .i32: return 0x20000 | 32
        case .i8: return 0x20000 | 8
        case .i64: return nil
        }
    }

    public init?(multiArrayRawValue raw: Int) {
        guard let d = DType.allCases.first(where: { $0.multiArrayRawValue == raw }) else { return nil }
        self = d
    }
}

/// Mirrors `CoremlComputeUnits` in coreml_bridge.h.
public enum ComputeUnits: Int32, CaseIterable, Sendable {
    case all = 0
    case cpuOnly = 1
    case cpuAndGPU = 2
    case cpuAndNeuralEngine = 3

    public var name: String {
        switch self {
        case .all: return "all"
        case .cpuOnly: return "cpuOnly"
        case .cpuAndGPU: return "cpuAndGPU"
        case .cpuAndNeuralEngine: return "cpuAndNeuralEngine"
        }
    }
}

/// IEEE 754 half <-> single conversions on bit patterns (no Float16 type:
/// it does not exist on macOS x86_64).
public enum Half {
    public static func toFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exp = Int((h >> 10) & 0x1f)
        let mant = UInt32(h & 0x3ff)
        let bits: UInt32
        if exp == 0 {
            if mant == 0 {
                bits = sign
            } else {
                // Subnormal half, mant * 2^-24: normalise to 1.f * 2^(-14-k).
                var m = mant
                var k = 0
                while m & 0x400 == 0 { m <<= 1; k += 1 }
                m &= 0x3ff
                bits = sign | UInt32(127 - 14 - k) << 23 | m << 13
            }
        } else if exp == 0x1f {
            bits = sign | 0x7f80_0000 | mant << 13
        } else {
            bits = sign | UInt32(exp - 15 + 127) << 23 | mant << 13
        }
        return Float(bitPattern: bits)
    }

    /// Round to nearest, ties to even.
    public static func fromFloat(_ f: Float) -> UInt16 {
        let x = f.bitPattern
        let sign = UInt16((x >> 16) & 0x8000)
        let exp = Int((x >> 23) & 0xff)
        var mant = x & 0x7f_ffff
        if exp == 0xff { // inf / nan
            return sign | 0x7c00 | (mant != 0 ? 0x200 : 0)
        }
        let e = exp - 127 + 15
        if e >= 0x1f { return sign | 0x7c00 }
        if e <= 0 {
            if e < -10 { return sign }
            mant |= 0x80_0000
            let shift = UInt32(14 - e)
            var half = mant >> shift
            let rem = mant & ((1 << shift) - 1)
            let halfway = UInt32(1) << (shift - 1)
            if rem > halfway || (rem == halfway && half & 1 == 1) { half += 1 }
            return sign | UInt16(half)
        }
        var half = UInt32(e) << 10 | mant >> 13
        let rem = mant & 0x1fff
        if rem > 0x1000 || (rem == 0x1000 && half & 1 == 1) {
            half += 1 // may carry into the exponent, up to 0x7c00 = infinity: correct
        }
        return sign | UInt16(half)
    }
}
