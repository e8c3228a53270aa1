//! Polino's uniform quantizer: the spec's op order and rounding by hand, buckets and padding,
//! bit-exact agreement of the kernel devices with cpu (both thread orders), the packed low-bit
//! export round trip, and the golden runner's exact I64 comparison of levels.

use lit_engine::distill::quantize::{
    bucket_rows, dequantize_cpu, pack_levels, quantize_uniform, quantize_uniform_cpu, unpack_levels,
};
use lit_engine::golden::{run_case, Case, Data, Outcome};
use lit_engine::testing::{kernel_devices, random_f32};
use lit_engine::{Device, Tensor};

#[test]
fn quantizer_follows_the_spec_by_hand() {
    // 2 bits (3 steps), one bucket: beta = -1, alpha = 3.
    let v = [-1.0f32, 0.0, 0.4, 2.0];
    let (out, a, b, l) = quantize_uniform_cpu(&v, 2, None);
    assert_eq!(
        (a.as_slice(), b.as_slice()),
        ([3.0f32].as_slice(), [-1.0f32].as_slice())
    );
    // u = (v+1)/3 = 0, 1/3, 0.4667, 1; r = 0, 1, 1.4, 3 -> levels 0, 1, 1, 3.
    assert_eq!(l, [0, 1, 1, 3]);
    let expect: Vec<f32> = l.iter().map(|&k| (k as f32 / 3.0) * 3.0 + -1.0).collect();
    assert_eq!(out, expect);
}

#[test]
fn ties_round_half_to_even() {
    // 2 bits: r = 1.5 -> 2; 1 bit: r = 0.5 -> 0. All exact in f32.
    let (_, _, _, l) = quantize_uniform_cpu(&[0.0, 0.5, 1.0], 2, None);
    assert_eq!(l, [0, 2, 3]);
    let (_, _, _, l) = quantize_uniform_cpu(&[0.0, 0.5, 1.0], 1, None);
    assert_eq!(l, [0, 0, 1]);
    // 3 bits (7 steps), alpha = 7: r = v exactly; 2.5 -> 2, 3.5 -> 4.
    let (_, _, _, l) = quantize_uniform_cpu(&[0.0, 2.5, 3.5, 7.0], 3, None);
    assert_eq!(l, [0, 2, 4, 7]);
}

#[test]
fn buckets_constant_rows_and_padding() {
    assert_eq!(bucket_rows(10, Some(4)), (3, 4));
    assert_eq!(bucket_rows(4, Some(4)), (1, 4));
    assert_eq!(bucket_rows(3, Some(4)), (1, 3));
    assert_eq!(bucket_rows(7, None), (1, 7));
    // Bucket 4 over 10 values: rows [0..4), [4..8), [8..10) (the padding repeats v[9]).
    let v = [5.0f32, 5.0, 5.0, 5.0, 0.0, 1.0, 2.0, 3.0, -2.0, 6.0];
    let (out, a, b, l) = quantize_uniform_cpu(&v, 4, Some(4));
    assert_eq!(a, [1.0, 3.0, 8.0], "a constant row gets alpha = 1");
    assert_eq!(b, [5.0, 0.0, -2.0]);
    assert_eq!(&l[..4], &[0; 4]);
    assert_eq!(&out[..4], &[5.0; 4], "a constant row is reproduced exactly");
    assert_eq!(l[9], 15);
    assert_eq!(out[8], -2.0);
}

#[test]
fn kernel_devices_match_cpu_bit_for_bit() {
    for (n, bits, bucket) in [
        (1000, 4, Some(256)),
        (777, 2, None),
        (5, 8, Some(256)),
        (513, 3, Some(7)),
    ] {
        let v = random_f32(n as u64, n);
        let (out, a, b, l) = quantize_uniform_cpu(&v, bits, bucket);
        for dev in kernel_devices() {
            let x = Tensor::from_slice(&[n], &v, &dev).unwrap();
            let q = quantize_uniform(&x, bits, bucket).unwrap();
            let what = format!("n={n} bits={bits} bucket={bucket:?} on {}", dev.name());
            assert_eq!(q.values.to_vec().unwrap(), out, "values, {what}");
            assert_eq!(q.alpha.to_vec().unwrap(), a, "alpha, {what}");
            assert_eq!(q.beta.to_vec().unwrap(), b, "beta, {what}");
            assert_eq!(q.levels.to_vec().unwrap(), l, "levels, {what}");
        }
    }
}

#[test]
fn packed_levels_round_trip_and_dequantize_exactly() {
    for bits in [1u32, 2, 3, 4, 5, 7, 8, 11, 16] {
        let n = 301;
        let v = random_f32(bits as u64 + 50, n);
        let (out, a, b, l) = quantize_uniform_cpu(&v, bits, Some(64));
        let packed = pack_levels(&l, bits).unwrap();
        assert_eq!(packed.len(), (n * bits as usize).div_ceil(8), "bits={bits}");
        let back = unpack_levels(&packed, bits, n).unwrap();
        assert_eq!(back, l, "bits={bits}");
        let values = dequantize_cpu(&back, &a, &b, bits, Some(64)).unwrap();
        assert_eq!(values, out, "bits={bits}");
    }
    assert!(pack_levels(&[4], 2).is_err(), "4 needs 3 bits");
    assert!(pack_levels(&[-1], 2).is_err());
    assert!(unpack_levels(&[0u8], 3, 3).is_err(), "9 bits in one byte");
}

#[test]
fn bad_arguments_are_errors() {
    let dev = Device::Cpu;
    let v = Tensor::from_slice(&[3], &[1.0, 2.0, 3.0], &dev).unwrap();
    assert!(quantize_uniform(&v, 0, None).is_err());
    assert!(quantize_uniform(&v, 17, None).is_err());
    assert!(quantize_uniform(&v, 4, Some(0)).is_err());
    let empty = Tensor::zeros(&[0], &dev).unwrap();
    assert!(quantize_uniform(&empty, 4, None).is_err());
}

/// The runner compares integer outputs exactly: the golden case passes, and one level off fails.
#[test]
fn golden_levels_are_compared_exactly() {
    let Some(path) = lit_engine::golden::locate::case_or_skip("op_quantize_spec_example") else {
        return;
    };
    let mut case = Case::load(&path).unwrap();
    assert!(matches!(run_case(&case, &Device::Cpu), Outcome::Passed));
    let Some(Data::I64 { values, .. }) = case.tensors.get_mut("expect.level") else {
        panic!("expect.level is not I64");
    };
    values[0] += 1;
    match run_case(&case, &Device::Cpu) {
        Outcome::Failed(f) => assert!(f.iter().any(|m| m.contains("expect.level")), "{f:?}"),
        _ => panic!("a wrong level must fail the case"),
    }
}
