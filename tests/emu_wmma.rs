//! The emulator's tensor-core side: `nvcuda::wmma` tiles (tf32, f16, bf16) and the half /
//! bfloat16 conversions, checked against the `half` crate. Kernels: `kernels/emu/selftest.cu`.

mod emu_support;
use emu_support::{addr, emu, launch, ORDERS};
use lit_engine::device::{EmuOrder, Gpu, KernelArgs, LaunchCfg};
use lit_engine::precision::round_tf32 as tf32;
use lit_engine::testing::random_f32;

/// Runs the one-warp WMMA self-test `kernel(a, b, c)` on `g`: `c` is read (when the kernel loads
/// it) and overwritten.
fn one_warp_tile<A: Clone, B: Clone>(g: &Gpu, kernel: &str, a: &[A], b: &[B], c: &mut [f32]) {
    let (mut a_d, mut b_d) = (a.to_vec(), b.to_vec());
    let mut args = KernelArgs::new();
    args.ptr(addr(&mut a_d)).ptr(addr(&mut b_d)).ptr(addr(c));
    launch(g, kernel, LaunchCfg::new((1, 1, 1), (32, 1, 1)), &mut args);
}

#[test]
fn wmma_tf32_and_f16_tiles() {
    let (a, b) = (random_f32(20, 16 * 8), random_f32(21, 8 * 16));
    for order in ORDERS {
        let mut c = vec![0.0f32; 256];
        one_warp_tile(&emu(order), "emu_wmma_tf32", &a, &b, &mut c);
        for i in 0..16 {
            for j in 0..16 {
                // a row-major (ld 8), b col-major (ld 8)
                let want: f64 = 1.0
                    + (0..8)
                        .map(|k| tf32(a[i * 8 + k]) as f64 * tf32(b[j * 8 + k]) as f64)
                        .sum::<f64>();
                let got = c[i * 16 + j] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "{order:?} tf32 c[{i}][{j}] = {got}, want {want}"
                );
            }
        }
    }
    let to_f16 = |v: &[f32]| {
        v.iter()
            .map(|&x| half::f16::from_f32(x))
            .collect::<Vec<_>>()
    };
    let (a, b, c0) = (
        to_f16(&random_f32(22, 256)),
        to_f16(&random_f32(23, 256)),
        random_f32(24, 256),
    );
    let mut c = c0.clone();
    one_warp_tile(&emu(EmuOrder::Reverse), "emu_wmma_f16", &a, &b, &mut c);
    for i in 0..16 {
        for j in 0..16 {
            // a col-major, b row-major, c col-major; all with leading dimension 16
            let dot: f64 = (0..16)
                .map(|k| a[k * 16 + i].to_f64() * b[k * 16 + j].to_f64())
                .sum();
            let (got, want) = (c[j * 16 + i] as f64, c0[j * 16 + i] as f64 + dot);
            assert!(
                (got - want).abs() < 1e-5,
                "f16 c[{i}][{j}] = {got}, want {want}"
            );
        }
    }
}

/// `__float2half` / `__float2bfloat16` and back, on the emulator, bit for bit against the Rust `half`
/// crate (the rounding `Precision::round` uses): every 16-bit pattern back to f32, and to 16 bits
/// every bf16 value with the low half at and around its rounding tie, every f16 value with the
/// f32 bits around its tie (normal and subnormal), and random f32 bit patterns (NaN payloads,
/// infinities, overflow and underflow included).
#[test]
fn half_and_bfloat16_conversions_match_the_half_crate() {
    let mut x: Vec<f32> = Vec::new();
    for p in 0..=u16::MAX as u32 {
        for low in [0u32, 0x7fff, 0x8000, 0x8001, 0xffff] {
            x.push(f32::from_bits(p << 16 | low));
        }
        let f = half::f16::from_bits(p as u16).to_f32();
        if f.is_finite() {
            // f16's rounding point is 13 f32 mantissa bits down for normals; subnormals' ties
            // lie elsewhere (below).
            for d in [-0x1001i32, -0x1000, -0xfff, -1, 1, 0xfff, 0x1000, 0x1001] {
                x.push(f32::from_bits(f.to_bits().wrapping_add_signed(d)));
            }
        }
    }
    for k in 0..2048 {
        // Half-way between subnormal (and the smallest normal) f16 neighbours, and just beside.
        let tie = (k as f32 + 0.5) * f32::powi(2.0, -24);
        x.extend([
            tie,
            -tie,
            f32::from_bits(tie.to_bits() + 1),
            f32::from_bits(tie.to_bits() - 1),
        ]);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..100_000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x.push(f32::from_bits((state >> 32) as u32));
    }
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        65504.0,
        65519.99,
        65520.0,
    ]);
    let n = x.len();
    let bits: Vec<u16> = (0..n).map(|i| i as u16).collect();
    let g = emu(EmuOrder::Reverse);
    let (mut xd, mut bd) = (x.clone(), bits.clone());
    let (mut to_half, mut to_bf16) = (vec![0u16; n], vec![0u16; n]);
    let (mut from_half, mut from_bf16) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut args = KernelArgs::new();
    args.ptr(addr(&mut xd))
        .ptr(addr(&mut bd))
        .ptr(addr(&mut to_half))
        .ptr(addr(&mut to_bf16))
        .ptr(addr(&mut from_half))
        .ptr(addr(&mut from_bf16))
        .value(&(n as i32));
    launch(
        &g,
        "emu_half_conversions",
        LaunchCfg::for_elements(n),
        &mut args,
    );
    for i in 0..n {
        let want = half::f16::from_f32(x[i]).to_bits();
        assert_eq!(
            to_half[i],
            want,
            "__float2half({:e} = {:#010x})",
            x[i],
            x[i].to_bits()
        );
        let want = half::bf16::from_f32(x[i]).to_bits();
        assert_eq!(
            to_bf16[i],
            want,
            "__float2bfloat16({:e} = {:#010x})",
            x[i],
            x[i].to_bits()
        );
        let want = half::f16::from_bits(bits[i]).to_f32().to_bits();
        assert_eq!(
            from_half[i].to_bits(),
            want,
            "__half2float({:#06x})",
            bits[i]
        );
        let want = half::bf16::from_bits(bits[i]).to_f32().to_bits();
        assert_eq!(
            from_bf16[i].to_bits(),
            want,
            "__bfloat162float({:#06x})",
            bits[i]
        );
    }
}

/// A bf16 tile product on the emulator's WMMA: operands as stored, products exact, f32 sums.
#[test]
fn wmma_bf16_tile() {
    let to_bf16 = |v: Vec<f32>| v.into_iter().map(half::bf16::from_f32).collect::<Vec<_>>();
    let (a, b) = (to_bf16(random_f32(25, 256)), to_bf16(random_f32(26, 256)));
    for order in ORDERS {
        let mut c = vec![0.0f32; 256];
        one_warp_tile(&emu(order), "emu_wmma_bf16", &a, &b, &mut c);
        for i in 0..16 {
            for j in 0..16 {
                // a row-major, b col-major
                let want: f64 = (0..16)
                    .map(|k| a[i * 16 + k].to_f64() * b[j * 16 + k].to_f64())
                    .sum();
                let got = c[i * 16 + j] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "{order:?} bf16 c[{i}][{j}] = {got}, want {want}"
                );
            }
        }
    }
}
