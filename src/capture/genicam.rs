//! GenICam triggers for GigE Vision and USB3 Vision cameras read through aravissrc.
//!
//! A machine-vision camera on a line is normally triggered: it takes one image when told to,
//! by a wire from the photo-eye into one of its input lines (a hardware trigger) or by a
//! `TriggerSoftware` command over the network. aravissrc has no property for either, and a
//! trigger mode set through its `features` string does not hold: aravissrc also sets the
//! camera's frame rate, and aravis's frame-rate setting switches GenICam's `TriggerMode` off
//! again. So the station does it
//! itself, through the `ArvCamera` that aravissrc exposes as its `camera` property, once the
//! source has negotiated its caps ([`GenicamTrigger::arm`]); and in server mode it fires a
//! software trigger for each trigger the PLC sends ([`GenicamTrigger::fire`]).
//!
//! (Seen with Debian 12's aravissrc 0.8.26 and aravis's fake camera: with
//! `features="TriggerMode=On TriggerSource=Software"` the camera still ran free, and read
//! `TriggerMode = Off` after the run.)
//!
//! The two calls are aravis's own `arv_camera_set_trigger` and `arv_camera_software_trigger`,
//! looked up in the libaravis that aravissrc has loaded into the process (no build-time link
//! to aravis, so a station without GigE cameras needs none of it).

use std::ffi::{CString, c_char, c_void};
use std::sync::OnceLock;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::glib::translate::FromGlibPtrFull;
use gstreamer::prelude::*;

/// The GenICam trigger source a triggered camera takes its frames from: `Software` (the
/// station fires it per PLC trigger) or an input line (`Line0`, `Line1`, …: a hardware
/// trigger wired to the camera).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSource(pub String);

impl TriggerSource {
    pub fn is_software(&self) -> bool {
        self.0 == "Software"
    }
}

/// Why a camera could not be triggered.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error(
        "a GenICam trigger needs an aravissrc in the camera pipeline (a GigE Vision or USB3 \
         Vision camera, pipelines/gige-aravis.gst)"
    )]
    NoAravisSource,
    #[error("libaravis is not loaded or lacks {0}")]
    Library(&'static str),
    #[error("aravissrc has no camera open")]
    NoCamera,
    #[error("the camera refused trigger source {trigger:?}: {message}")]
    Refused { trigger: String, message: String },
    #[error("the trigger source {0:?} is not a valid GenICam name")]
    Name(String),
}

type SetTrigger = unsafe extern "C" fn(*mut c_void, *const c_char, *mut *mut glib::ffi::GError);
type SoftwareTrigger = unsafe extern "C" fn(*mut c_void, *mut *mut glib::ffi::GError);

/// aravis's two functions, from the library aravissrc loaded.
struct Aravis {
    set_trigger: SetTrigger,
    software_trigger: SoftwareTrigger,
}

fn aravis() -> Result<&'static Aravis, TriggerError> {
    static ARAVIS: OnceLock<Result<Aravis, &'static str>> = OnceLock::new();
    ARAVIS
        .get_or_init(|| {
            // SAFETY: dlopen with RTLD_NOLOAD only returns a library already in the process
            // (aravissrc's), and the handle is never closed, so the function pointers stay
            // valid; the names are aravis 0.8's, with the signatures declared above.
            unsafe {
                let handle = libc::dlopen(
                    c"libaravis-0.8.so.0".as_ptr(),
                    libc::RTLD_NOW | libc::RTLD_NOLOAD,
                );
                if handle.is_null() {
                    return Err("libaravis-0.8.so.0");
                }
                let set_trigger = libc::dlsym(handle, c"arv_camera_set_trigger".as_ptr());
                let software_trigger = libc::dlsym(handle, c"arv_camera_software_trigger".as_ptr());
                if set_trigger.is_null() {
                    return Err("arv_camera_set_trigger");
                }
                if software_trigger.is_null() {
                    return Err("arv_camera_software_trigger");
                }
                Ok(Aravis {
                    set_trigger: std::mem::transmute::<*mut c_void, SetTrigger>(set_trigger),
                    software_trigger: std::mem::transmute::<*mut c_void, SoftwareTrigger>(
                        software_trigger,
                    ),
                })
            }
        })
        .as_ref()
        .map_err(|missing| TriggerError::Library(missing))
}

/// The error a GError out-parameter carries, taking ownership of it.
///
/// # Safety
/// `error` is null or a GError the callee handed over.
unsafe fn take_error(error: *mut glib::ffi::GError) -> Option<glib::Error> {
    // SAFETY: per the function's contract.
    (!error.is_null()).then(|| unsafe { glib::Error::from_glib_full(error) })
}

/// A triggered GenICam camera: the `ArvCamera` of the pipeline's aravissrc.
#[derive(Clone)]
pub struct GenicamTrigger {
    camera: glib::Object,
    aravis: &'static Aravis,
}

// SAFETY: `glib::Object` is not Send/Sync for any GObject, and aravis's objects are not
// thread-safe in general. But after negotiation aravissrc's streaming thread only pops buffers
// from its ArvStream (which is thread-safe) and touches the ArvCamera again only to stop or to
// renegotiate (the station's pipelines have fixed caps) or when its properties are read (the
// station reads none); from arming on, the trigger relay's thread is the camera's only user,
// one call at a time. GObject reference counting is atomic, so holding and dropping the
// reference on another thread is sound.
unsafe impl Send for GenicamTrigger {}
// SAFETY: as for Send; `&GenicamTrigger` only reaches the relay thread.
unsafe impl Sync for GenicamTrigger {}

impl std::fmt::Debug for GenicamTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenicamTrigger")
            .field("camera", &self.camera.type_())
            .finish()
    }
}

/// The pipeline's aravissrc, if it has one.
pub fn aravis_source(pipeline: &gst::Pipeline) -> Option<gst::Element> {
    pipeline.iterate_recurse().into_iter().flatten().find(|e| {
        e.factory()
            .is_some_and(|factory| factory.name() == "aravissrc")
    })
}

/// Whether `source` has negotiated its caps: aravissrc configures the camera (and turns its
/// trigger off with the frame rate) when it does, so the trigger is set after.
pub fn negotiated(source: &gst::Element) -> bool {
    source
        .static_pad("src")
        .is_some_and(|pad| pad.current_caps().is_some())
}

impl GenicamTrigger {
    /// Puts the camera of `source` (an aravissrc that has negotiated) in trigger mode on
    /// `trigger`: `TriggerSelector=FrameStart`, `TriggerMode=On`, `TriggerSource`.
    pub fn arm(
        source: &gst::Element,
        trigger: &TriggerSource,
    ) -> Result<GenicamTrigger, TriggerError> {
        let aravis = aravis()?;
        let camera = source
            .property::<Option<glib::Object>>("camera")
            .ok_or(TriggerError::NoCamera)?;
        let name =
            CString::new(trigger.0.as_str()).map_err(|_| TriggerError::Name(trigger.0.clone()))?;
        let mut error = std::ptr::null_mut();
        // SAFETY: `camera` is aravissrc's ArvCamera, alive while we hold our reference; the
        // name is a NUL-terminated string that outlives the call.
        let error = unsafe {
            (aravis.set_trigger)(camera.as_ptr() as *mut c_void, name.as_ptr(), &mut error);
            take_error(error)
        };
        if let Some(error) = error {
            return Err(TriggerError::Refused {
                trigger: trigger.0.clone(),
                message: error.to_string(),
            });
        }
        tracing::info!(source = %trigger.0, "camera armed: one frame per GenICam trigger");
        Ok(GenicamTrigger { camera, aravis })
    }

    /// Fires the camera's `TriggerSoftware` command: it takes one frame.
    pub fn fire(&self) -> Result<(), glib::Error> {
        let mut error = std::ptr::null_mut();
        // SAFETY: as in `arm`.
        let error = unsafe {
            (self.aravis.software_trigger)(self.camera.as_ptr() as *mut c_void, &mut error);
            take_error(error)
        };
        error.map_or(Ok(()), Err)
    }
}
