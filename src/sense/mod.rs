//! Line sensor data in: the tags the station watches beside its camera (temperatures,
//! vibrations, speeds), where their samples come from, how each sample's quality is judged, and
//! where they are kept.
//!
//! A stage beside [`crate::capture`]: it never touches a part's path to the gate. Sources
//! (Modbus polling, HTTP push, CSV import, MQTT) hand raw samples to one ingest point, which
//! flags their quality and stores them; [`crate::analyse`] reads them back.
