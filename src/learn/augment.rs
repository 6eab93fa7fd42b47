//! Training-time augmentation of an image together with its defect mask.
//!
//! A labelled set from a new line is small, so the supervised model sees each training image a
//! few times, each time changed the way real parts change at a station: mirrored, turned a few
//! degrees on the belt, lit a little brighter or darker, with a little more sensor noise. The
//! geometric changes move the mask with the image (nearest-neighbour, so it stays binary); the
//! photometric ones touch the image only. OpenCV does the resampling.

use opencv::core::{self, Mat, Point2f, Scalar, Size};
use opencv::imgproc;
use opencv::prelude::*;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::part::GrayImage;

/// Largest rotation either way, in degrees: parts sit on a belt, not anywhere on a turntable.
const MAX_ROTATION_DEG: f64 = 10.0;

/// Largest brightness shift, in grey levels, and contrast gain either way.
const MAX_BRIGHTNESS: f64 = 20.0;
const MAX_CONTRAST: f64 = 0.15;

/// Largest standard deviation of the added Gaussian noise, in grey levels.
const MAX_NOISE_SIGMA: f64 = 6.0;

/// An augmentation failed inside OpenCV.
#[derive(Debug, thiserror::Error)]
#[error("augmentation: {0}")]
pub struct AugmentError(#[from] opencv::Error);

/// One random change, drawn once and applied to an image and its mask alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
    pub rotation_deg: f64,
    /// `out = contrast · in + brightness`
    pub contrast: f64,
    pub brightness: f64,
    pub noise_sigma: f64,
}

impl Augmentation {
    /// No change at all.
    pub const IDENTITY: Augmentation = Augmentation {
        flip_horizontal: false,
        flip_vertical: false,
        rotation_deg: 0.0,
        contrast: 1.0,
        brightness: 0.0,
        noise_sigma: 0.0,
    };

    /// A random augmentation within the limits above.
    pub fn random(rng: &mut impl Rng) -> Augmentation {
        Augmentation {
            flip_horizontal: rng.gen_bool(0.5),
            flip_vertical: rng.gen_bool(0.5),
            rotation_deg: rng.gen_range(-MAX_ROTATION_DEG..=MAX_ROTATION_DEG),
            contrast: 1.0 + rng.gen_range(-MAX_CONTRAST..=MAX_CONTRAST),
            brightness: rng.gen_range(-MAX_BRIGHTNESS..=MAX_BRIGHTNESS),
            noise_sigma: rng.gen_range(0.0..=MAX_NOISE_SIGMA),
        }
    }

    /// Applies the change to `image` and, geometrically only, to `mask` (same size as the
    /// image). `rng` draws the noise.
    pub fn apply(
        &self,
        image: &GrayImage,
        mask: &GrayImage,
        rng: &mut impl Rng,
    ) -> Result<(GrayImage, GrayImage), AugmentError> {
        let flipped = |image: &GrayImage| GrayImage {
            pixels: flip(
                &image.pixels,
                image.width as usize,
                image.height as usize,
                self.flip_horizontal,
                self.flip_vertical,
            ),
            width: image.width,
            height: image.height,
        };
        let mut image_mat = to_mat(&flipped(image))?;
        let mut mask_mat = to_mat(&flipped(mask))?;
        if self.rotation_deg != 0.0 {
            // Reflected borders: a black wedge would be a "defect" the mask does not mark.
            image_mat = rotated(&image_mat, self.rotation_deg, imgproc::INTER_LINEAR)?;
            mask_mat = rotated(&mask_mat, self.rotation_deg, imgproc::INTER_NEAREST)?;
        }
        let mut image = from_mat(&image_mat)?;
        if self.contrast != 1.0 || self.brightness != 0.0 || self.noise_sigma > 0.0 {
            let noise = Normal::new(0.0, self.noise_sigma.max(f64::MIN_POSITIVE))
                .unwrap_or_else(|_| Normal::new(0.0, 1.0).expect("unit normal"));
            for pixel in &mut image.pixels {
                let mut value =
                    self.contrast * (f64::from(*pixel) - 127.5) + 127.5 + self.brightness;
                if self.noise_sigma > 0.0 {
                    value += noise.sample(rng);
                }
                *pixel = value.round().clamp(0.0, 255.0) as u8;
            }
        }
        Ok((image, from_mat(&mask_mat)?))
    }
}

fn to_mat(image: &GrayImage) -> Result<Mat, opencv::Error> {
    Mat::new_rows_cols_with_data(image.height as i32, image.width as i32, &image.pixels)?
        .try_clone()
}

fn from_mat(mat: &Mat) -> Result<GrayImage, opencv::Error> {
    // `data_bytes` needs one continuous buffer; only a strided view has to be copied first.
    let copy;
    let mat = if mat.is_continuous() {
        mat
    } else {
        copy = mat.try_clone()?;
        &copy
    };
    Ok(GrayImage {
        width: mat.cols() as u32,
        height: mat.rows() as u32,
        pixels: mat.data_bytes()?.to_vec(),
    })
}

/// A row-major `w`×`h` grid (an image, a mask, a grid of cell targets) mirrored left-right
/// and/or upside down.
pub fn flip<T: Copy>(data: &[T], w: usize, h: usize, flip_x: bool, flip_y: bool) -> Vec<T> {
    let mut out = Vec::with_capacity(data.len());
    for y in 0..h {
        let sy = if flip_y { h - 1 - y } else { y };
        for x in 0..w {
            let sx = if flip_x { w - 1 - x } else { x };
            out.push(data[sy * w + sx]);
        }
    }
    out
}

fn rotated(mat: &Mat, degrees: f64, interpolation: i32) -> Result<Mat, opencv::Error> {
    let centre = Point2f::new(mat.cols() as f32 / 2.0, mat.rows() as f32 / 2.0);
    let rotation = imgproc::get_rotation_matrix_2d(centre, degrees, 1.0)?;
    let mut out = Mat::default();
    imgproc::warp_affine(
        mat,
        &mut out,
        &rotation,
        Size::new(mat.cols(), mat.rows()),
        interpolation,
        core::BORDER_REFLECT_101,
        Scalar::default(),
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn image_with_spot(x: u32, y: u32) -> (GrayImage, GrayImage) {
        let (w, h) = (40u32, 30u32);
        let mut image = GrayImage::new(w, h, vec![100; (w * h) as usize]).expect("size");
        let mut mask = GrayImage::new(w, h, vec![0; (w * h) as usize]).expect("size");
        for dy in 0..3 {
            for dx in 0..3 {
                let i = ((y + dy) * w + x + dx) as usize;
                image.pixels[i] = 250;
                mask.pixels[i] = 255;
            }
        }
        (image, mask)
    }

    fn spot_centre(mask: &GrayImage) -> (f64, f64) {
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
        for (i, &p) in mask.pixels.iter().enumerate() {
            if p > 0 {
                sx += (i % mask.width as usize) as f64;
                sy += (i / mask.width as usize) as f64;
                n += 1.0;
            }
        }
        (sx / n, sy / n)
    }

    #[test]
    fn flip_mirrors_both_axes() {
        let data = [1, 2, 3, 4, 5, 6];
        assert_eq!(flip(&data, 3, 2, true, false), [3, 2, 1, 6, 5, 4]);
        assert_eq!(flip(&data, 3, 2, false, true), [4, 5, 6, 1, 2, 3]);
        assert_eq!(flip(&data, 3, 2, true, true), [6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn identity_changes_nothing() {
        let (image, mask) = image_with_spot(5, 6);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (a, m) = Augmentation::IDENTITY
            .apply(&image, &mask, &mut rng)
            .expect("applies");
        assert_eq!((a, m), (image, mask));
    }

    #[test]
    fn flips_move_the_mask_with_the_image() {
        let (image, mask) = image_with_spot(5, 6);
        let flip = Augmentation {
            flip_horizontal: true,
            flip_vertical: true,
            ..Augmentation::IDENTITY
        };
        let (a, m) = flip
            .apply(&image, &mask, &mut ChaCha8Rng::seed_from_u64(1))
            .expect("applies");
        // The spot's centre (6, 7) goes to (40−1−6, 30−1−7).
        assert_eq!(spot_centre(&m), (33.0, 22.0));
        for (pixel, marked) in a.pixels.iter().zip(&m.pixels) {
            assert_eq!(*pixel == 250, *marked > 0);
        }
    }

    #[test]
    fn rotation_keeps_the_mask_binary_and_on_the_spot() {
        let (image, mask) = image_with_spot(28, 8);
        let turn = Augmentation {
            rotation_deg: 10.0,
            ..Augmentation::IDENTITY
        };
        let (a, m) = turn
            .apply(&image, &mask, &mut ChaCha8Rng::seed_from_u64(1))
            .expect("applies");
        assert!(m.pixels.iter().all(|&p| p == 0 || p == 255));
        assert!(m.pixels.iter().any(|&p| p > 0));
        // Where the mask says defect, the image is bright.
        for (pixel, marked) in a.pixels.iter().zip(&m.pixels) {
            if *marked > 0 {
                assert!(*pixel > 150, "masked pixel {pixel}");
            }
        }
        assert_ne!(spot_centre(&m), spot_centre(&mask));
    }

    #[test]
    fn photometric_changes_leave_the_mask_alone_and_are_seeded() {
        let (image, mask) = image_with_spot(5, 6);
        let light = Augmentation {
            contrast: 1.1,
            brightness: 10.0,
            noise_sigma: 3.0,
            ..Augmentation::IDENTITY
        };
        let (a, m) = light
            .apply(&image, &mask, &mut ChaCha8Rng::seed_from_u64(9))
            .expect("applies");
        let (b, _) = light
            .apply(&image, &mask, &mut ChaCha8Rng::seed_from_u64(9))
            .expect("applies");
        assert_eq!(m, mask);
        assert_eq!(a, b);
        let mean = a.pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / a.pixels.len() as f64;
        // 1.1 · (100 − 127.5) + 127.5 + 10 ≈ 107, plus a few bright spot pixels.
        assert!((105.0..112.0).contains(&mean), "mean {mean}");
    }
}
