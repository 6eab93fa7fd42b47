//! Named control charts: the `[[charts]]` tables of the station TOML, and how a chart is
//! computed from the production counts or from a tag's samples.
//!
//! [`spc`](super::spc) draws a chart from points it is handed; this module decides which points:
//! the share of parts rejected or the defects per part of each hour, shift or day (from
//! [`ProductionCounts`](super::ProductionCounts)), or a tag's per-minute means and subgroups of
//! its raw samples (from [`Sensors`]). Only samples flagged good enter a chart: the per-minute
//! means are the store's aggregates of good samples (a minute without one is left out), and
//! subgroups are made of good raw samples only. A chart has a name so an alarm can watch it:
//! `[[alarms]] source = "chart:<name>", on = "violation"` goes active while the newest point of
//! the chart breaks one of its rules ([`latest_violation`]). Alarms judge a count chart's
//! completed periods only ([`evaluate_completed`]); the HTTP chart shows the current one too.
//!
//! ```toml
//! # Share of parts rejected per hour, Laney p′ (the default for reject_rate: at 100 %
//! # inspection n is large, so plain p limits flag ordinary hour-to-hour variation).
//! [[charts]]
//! name = "reject_rate"
//! of = "reject_rate"
//! rules = ["nelson_1", "nelson_2"]
//!
//! # Defects per part per day over the last two weeks, limits from the first 7 days only.
//! [[charts]]
//! name = "defects_daily"
//! of = "defects_per_part"
//! kind = "u"
//! period = "day"
//! window_hours = 336
//! baseline = 7
//!
//! # X̄-R of the oven temperature in subgroups of 5 good samples, Cp/Cpk from the tag's
//! # spec_limits, against a known process (Phase II).
//! [[charts]]
//! name = "oven_xbar"
//! of = "tag:oven_temp"
//! kind = "xbar_r"
//! subgroup_size = 5
//! center = 182.0
//! sigma = 1.5
//! rules = ["western_electric"]
//!
//! [[alarms]]
//! name = "oven_out_of_control"
//! message = "Oven temperature out of statistical control"
//! priority = "medium"
//! source = "chart:oven_xbar"
//! on = "violation"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::spc::{
    self, Chart, ChartKind, ChartOptions, Count, CusumOptions, EwmaOptions, Limits, Observation,
    RuleSet, SUBGROUP_SIZES, SpcError, SpecLimits, Subgroup,
};
use super::{AnalyseError, Production, ShiftCalendar};
use crate::sense::{Flag, SenseError, Sensors, TagConfig};

/// Names the API's ad-hoc chart paths (`/api/v1/charts/reject-rate`) already use.
pub const RESERVED_NAMES: [&str; 2] = ["reject-rate", "defects-per-part"];

/// Most points a chart may have: two weeks of minutes. A longer chart is unreadable on a
/// screen, and reading it would hold an API request past its time limit.
pub const MAX_POINTS: usize = 20_160;

/// Longest window a chart may look back over: 400 days, as the KPIs.
pub const MAX_WINDOW_HOURS: f64 = 400.0 * 24.0;

/// Subgroup size of an X̄ chart that does not name one: the handbook's usual 5.
pub const DEFAULT_SUBGROUP_SIZE: usize = 5;

/// Bounds of the EWMA and CUSUM parameters. Values past them are no longer a design anyone
/// uses, and would let limits overflow to infinity (which JSON cannot carry).
pub const MAX_EWMA_L: f64 = 6.0;
pub const MAX_CUSUM_K: f64 = 5.0;
pub const MAX_CUSUM_H: f64 = 50.0;

/// Largest magnitude of a fixed centre or σ, for the same reason.
const MAX_FIXED: f64 = 1e12;

const MINUTE_MS: i64 = 60_000;

/// Why a chart could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// The chart itself: an SPC rule about its points or parameters.
    #[error(transparent)]
    Spc(#[from] SpcError),
    /// The definition or request does not describe a chart (a configured chart never does
    /// this: its definition was checked at load).
    #[error("{0}")]
    Invalid(String),
    #[error("no tag named {0:?} is configured")]
    UnknownTag(String),
    #[error("this station keeps no sensor data")]
    NoSensors,
    /// The range holds nothing to plot; says what was looked for.
    #[error("no data: {0}")]
    NoData(String),
    #[error(
        "the chart would have {points} points, at most {MAX_POINTS} are drawn: narrow the range"
    )]
    TooManyPoints { points: usize },
    #[error(transparent)]
    Sense(#[from] SenseError),
    #[error(transparent)]
    Analyse(#[from] AnalyseError),
}

/// What a chart follows, parsed from [`ChartDefinition::of`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChartOf {
    /// Parts rejected at the gate out of parts inspected, per period.
    RejectRate,
    /// Defects (classified defective parts) per part inspected, per period.
    DefectsPerPart,
    /// A tag's good samples.
    Tag(String),
}

impl ChartOf {
    /// The kind a chart of this gets unless it names one. Laney's charts for counts, since at
    /// 100 % inspection n is large and plain p/u limits flag the ordinary variation between
    /// hours; I-MR for tags, which needs no subgroup design.
    pub fn default_kind(&self) -> ChartKind {
        match self {
            ChartOf::RejectRate => ChartKind::LaneyP,
            ChartOf::DefectsPerPart => ChartKind::LaneyU,
            ChartOf::Tag(_) => ChartKind::Individuals,
        }
    }

    /// The kinds that can chart this.
    pub fn kinds(&self) -> &'static [ChartKind] {
        match self {
            ChartOf::RejectRate => &[ChartKind::P, ChartKind::LaneyP],
            ChartOf::DefectsPerPart => &[ChartKind::U, ChartKind::LaneyU],
            ChartOf::Tag(_) => &[
                ChartKind::Individuals,
                ChartKind::XbarR,
                ChartKind::XbarS,
                ChartKind::Ewma,
                ChartKind::Cusum,
            ],
        }
    }

    /// How far back a chart looks unless told: a day of hours for counts, a shift of minutes
    /// for tags.
    pub fn default_window_hours(&self) -> f64 {
        match self {
            ChartOf::RejectRate | ChartOf::DefectsPerPart => 24.0,
            ChartOf::Tag(_) => 8.0,
        }
    }

    fn is_attribute(&self) -> bool {
        !matches!(self, ChartOf::Tag(_))
    }
}

impl FromStr for ChartOf {
    type Err = String;

    fn from_str(text: &str) -> Result<ChartOf, String> {
        match text {
            "reject_rate" => Ok(ChartOf::RejectRate),
            "defects_per_part" => Ok(ChartOf::DefectsPerPart),
            _ => match text.strip_prefix("tag:") {
                Some(tag) if !tag.is_empty() => Ok(ChartOf::Tag(tag.to_owned())),
                _ => Err(format!(
                    "expected \"reject_rate\", \"defects_per_part\" or \"tag:<name>\", got {text:?}"
                )),
            },
        }
    }
}

impl fmt::Display for ChartOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChartOf::RejectRate => f.write_str("reject_rate"),
            ChartOf::DefectsPerPart => f.write_str("defects_per_part"),
            ChartOf::Tag(tag) => write!(f, "tag:{tag}"),
        }
    }
}

/// The period one point of a count chart covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChartPeriod {
    /// Local hours.
    #[default]
    Hour,
    /// Runs of the shifts of the calendar; parts made outside every shift are left out.
    Shift,
    /// Local days.
    Day,
}

/// One chart as the station TOML declares it (`[[charts]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartDefinition {
    /// 1 to 64 of `a-z 0-9 _ - .` (as alarm names): names the chart in URLs and in alarm
    /// sources (`chart:<name>`).
    pub name: String,
    /// `reject_rate`, `defects_per_part` or `tag:<name>`.
    pub of: String,
    /// Default: `laney_p`, `laney_u` or `individuals` (see [`ChartOf::default_kind`]).
    #[serde(default)]
    pub kind: Option<ChartKind>,
    /// Count charts only; default `hour`.
    #[serde(default)]
    pub period: Option<ChartPeriod>,
    /// How far back the chart looks; default 24 for counts, 8 for tags.
    #[serde(default)]
    pub window_hours: Option<f64>,
    /// Run rules (`nelson_1` … `nelson_8`, `we_1` … `we_4`, `nelson`, `western_electric`).
    #[serde(default = "default_rules")]
    pub rules: Vec<String>,
    /// Phase I: limits from the first this many points only, so later points are judged
    /// against a stretch known to be stable. Absent: from the whole window.
    #[serde(default)]
    pub baseline: Option<usize>,
    /// Phase II: the known process centre (p̄, ū or μ) …
    #[serde(default)]
    pub center: Option<f64>,
    /// … and σ (process σ for tags, Laney's σ_z for p′/u′, 1 for plain p/u).
    #[serde(default)]
    pub sigma: Option<f64>,
    /// X̄ charts: good samples per subgroup, 2 to 25; default 5.
    #[serde(default)]
    pub subgroup_size: Option<usize>,
    /// EWMA: weight of the newest point, (0, 1]; default 0.2.
    #[serde(default)]
    pub lambda: Option<f64>,
    /// EWMA: limit width in σ of the statistic; default 3.
    #[serde(default)]
    pub l: Option<f64>,
    /// CUSUM: reference value in σ; default 0.5.
    #[serde(default)]
    pub k: Option<f64>,
    /// CUSUM: decision interval in σ; default 5.
    #[serde(default)]
    pub h: Option<f64>,
}

fn default_rules() -> Vec<String> {
    vec!["nelson_1".into()]
}

/// A chart fully resolved: what it follows and every setting, defaults filled in. What the
/// configured charts and the API's ad-hoc charts are both computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartRequest {
    pub of: ChartOf,
    pub kind: ChartKind,
    /// Count charts only.
    pub period: ChartPeriod,
    pub limits: Limits,
    pub rules: RuleSet,
    /// X̄ charts only.
    pub subgroup_size: usize,
    pub ewma: EwmaOptions,
    pub cusum: CusumOptions,
}

impl ChartRequest {
    /// A chart of `of` with every default: its default kind unless `kind` is given.
    pub fn new(of: ChartOf, kind: Option<ChartKind>) -> ChartRequest {
        let kind = kind.unwrap_or_else(|| of.default_kind());
        ChartRequest {
            of,
            kind,
            period: ChartPeriod::default(),
            limits: Limits::default(),
            rules: RuleSet::default(),
            subgroup_size: DEFAULT_SUBGROUP_SIZE,
            ewma: EwmaOptions::default(),
            cusum: CusumOptions::default(),
        }
    }

    /// Every problem of the settings as `(field, message)`: the kind for the source, the
    /// subgroup size, the EWMA/CUSUM parameters and the limits.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !self.of.kinds().contains(&self.kind) {
            let kinds: Vec<String> = self.of.kinds().iter().map(kind_name).collect();
            problems.push((
                "kind",
                format!(
                    "a chart of {} is one of {}, not {}",
                    self.of,
                    kinds.join(", "),
                    kind_name(&self.kind)
                ),
            ));
        }
        if !SUBGROUP_SIZES.contains(&self.subgroup_size) {
            problems.push((
                "subgroup_size",
                format!(
                    "expected 2 to 25 samples per subgroup, got {}",
                    self.subgroup_size
                ),
            ));
        }
        let within =
            |value: f64, low: f64, high: f64| value.is_finite() && value > low && value <= high;
        if !within(self.ewma.lambda, 0.0, 1.0) {
            problems.push((
                "lambda",
                format!("expected a weight in (0, 1], got {}", self.ewma.lambda),
            ));
        }
        if !within(self.ewma.l, 0.0, MAX_EWMA_L) {
            problems.push((
                "l",
                format!(
                    "expected a width in (0, {MAX_EWMA_L}] σ, got {}",
                    self.ewma.l
                ),
            ));
        }
        if !within(self.cusum.k, 0.0, MAX_CUSUM_K) {
            problems.push((
                "k",
                format!(
                    "expected a reference value in (0, {MAX_CUSUM_K}] σ, got {}",
                    self.cusum.k
                ),
            ));
        }
        if !within(self.cusum.h, 0.0, MAX_CUSUM_H) {
            problems.push((
                "h",
                format!(
                    "expected a decision interval in (0, {MAX_CUSUM_H}] σ, got {}",
                    self.cusum.h
                ),
            ));
        }
        match self.limits {
            Limits::Estimated {
                baseline: Some(baseline),
            } if !(1..=MAX_POINTS).contains(&baseline) => problems.push((
                "baseline",
                format!("expected 1 to {MAX_POINTS} points, got {baseline}"),
            )),
            Limits::Estimated { .. } => {}
            Limits::Fixed { center, sigma } => {
                let (low, high) = match self.of {
                    ChartOf::RejectRate => (0.0, 1.0),
                    ChartOf::DefectsPerPart => (0.0, MAX_FIXED),
                    ChartOf::Tag(_) => (-MAX_FIXED, MAX_FIXED),
                };
                if !(center.is_finite() && center >= low && center <= high) {
                    problems.push((
                        "center",
                        format!("expected a centre in [{low}, {high}], got {center}"),
                    ));
                }
                if !within(sigma, 0.0, MAX_FIXED) {
                    problems.push((
                        "sigma",
                        format!("expected a σ in (0, {MAX_FIXED}], got {sigma}"),
                    ));
                }
            }
        }
        problems
    }

    /// The request, or its problems in one message.
    pub fn checked(self) -> Result<ChartRequest, ChartError> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(self);
        }
        Err(ChartError::Invalid(
            problems
                .into_iter()
                .map(|(field, message)| format!("{field}: {message}"))
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }
}

/// A kind by its configuration name (`laney_p`), as the TOML and the API write it.
fn kind_name(kind: &ChartKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| kind.to_string())
}

impl ChartDefinition {
    /// What the chart follows.
    pub fn source(&self) -> Result<ChartOf, String> {
        self.of.parse()
    }

    /// The window, default by source.
    pub fn window(&self) -> Result<TimeDelta, ChartError> {
        let of = self.source().map_err(ChartError::Invalid)?;
        let hours = self
            .window_hours
            .unwrap_or_else(|| of.default_window_hours());
        window_of_hours(hours).ok_or_else(|| {
            ChartError::Invalid(format!(
                "window_hours: expected (0, {MAX_WINDOW_HOURS}], got {hours}"
            ))
        })
    }

    /// The resolved chart, or every problem of the definition as `(field, message)` (tags are
    /// not looked up: see [`check_definitions`]).
    pub fn request(&self) -> Result<ChartRequest, Vec<(String, String)>> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut problem = |field: &str, message: String| problems.push((field.into(), message));
        let of = match self.source() {
            Ok(of) => of,
            Err(message) => {
                problem("of", message);
                return Err(problems);
            }
        };
        let mut request = ChartRequest::new(of.clone(), self.kind);
        if let Some(hours) = self.window_hours
            && window_of_hours(hours).is_none()
        {
            problem(
                "window_hours",
                format!("expected hours in (0, {MAX_WINDOW_HOURS}], got {hours}"),
            );
        }
        match RuleSet::parse(&self.rules) {
            Ok(rules) => request.rules = rules,
            Err(error) => problem("rules", error.to_string()),
        }
        if let Some(period) = self.period {
            if of.is_attribute() {
                request.period = period;
            } else {
                problem(
                    "period",
                    "count charts (reject_rate, defects_per_part) have a period; a tag chart's \
                     points are minutes or subgroups"
                        .into(),
                );
            }
        }
        let kind = request.kind;
        let only = |field: &str,
                    given: bool,
                    kinds: &[ChartKind],
                    problem: &mut dyn FnMut(&str, String)| {
            if given && !kinds.contains(&kind) {
                let names: Vec<String> = kinds.iter().map(kind_name).collect();
                problem(
                    field,
                    format!(
                        "applies to {} charts only, not {}",
                        names.join(" and "),
                        kind_name(&kind)
                    ),
                );
            }
        };
        only(
            "subgroup_size",
            self.subgroup_size.is_some(),
            &[ChartKind::XbarR, ChartKind::XbarS],
            &mut problem,
        );
        only(
            "lambda",
            self.lambda.is_some(),
            &[ChartKind::Ewma],
            &mut problem,
        );
        only("l", self.l.is_some(), &[ChartKind::Ewma], &mut problem);
        only("k", self.k.is_some(), &[ChartKind::Cusum], &mut problem);
        only("h", self.h.is_some(), &[ChartKind::Cusum], &mut problem);
        if let Some(size) = self.subgroup_size {
            request.subgroup_size = size;
        }
        request.ewma.lambda = self.lambda.unwrap_or(request.ewma.lambda);
        request.ewma.l = self.l.unwrap_or(request.ewma.l);
        request.cusum.k = self.k.unwrap_or(request.cusum.k);
        request.cusum.h = self.h.unwrap_or(request.cusum.h);
        match (self.center, self.sigma, self.baseline) {
            (Some(center), Some(sigma), None) => request.limits = Limits::Fixed { center, sigma },
            (Some(_), Some(_), Some(_)) => problem(
                "baseline",
                "a chart has estimated limits (baseline) or fixed ones (center and sigma), not both"
                    .into(),
            ),
            (Some(_), None, _) | (None, Some(_), _) => problem(
                if self.center.is_some() { "sigma" } else { "center" },
                "fixed limits need both center and sigma".into(),
            ),
            (None, None, baseline) => request.limits = Limits::Estimated { baseline },
        }
        for (field, message) in request.problems() {
            problem(field, message);
        }
        if problems.is_empty() {
            Ok(request)
        } else {
            Err(problems)
        }
    }
}

/// `hours` as a window, if in (0, [`MAX_WINDOW_HOURS`]].
fn window_of_hours(hours: f64) -> Option<TimeDelta> {
    (hours.is_finite() && hours > 0.0 && hours <= MAX_WINDOW_HOURS)
        .then(|| TimeDelta::milliseconds((hours * 3_600_000.0).round() as i64))
        .filter(|w| *w > TimeDelta::zero())
}

/// Whether `name` can name a chart: as an alarm name (a URL path segment), and none of the
/// API's fixed chart paths.
pub fn valid_name(name: &str) -> bool {
    super::alarms::valid_name(name) && !RESERVED_NAMES.contains(&name)
}

/// Every problem of the `[[charts]]` tables at once, as `(field, message)` with fields such as
/// `charts[1].kind`. `tags` are the configured tags a `tag:` chart may name.
pub fn check_definitions(
    definitions: &[ChartDefinition],
    tags: &[TagConfig],
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (i, d) in definitions.iter().enumerate() {
        let mut problem = |field: &str, message: String| {
            problems.push((format!("charts[{i}].{field}"), message));
        };
        if !super::alarms::valid_name(&d.name) {
            problem(
                "name",
                format!(
                    "{:?} must be 1 to 64 of a-z, 0-9, '_', '-', '.', not starting with '.'",
                    d.name
                ),
            );
        } else if RESERVED_NAMES.contains(&d.name.as_str()) {
            problem("name", format!("{:?} is reserved by the API", d.name));
        }
        if definitions[..i].iter().any(|e| e.name == d.name) {
            problem("name", format!("{:?} is defined twice", d.name));
        }
        let request = match d.request() {
            Ok(request) => Some(request),
            Err(found) => {
                for (field, message) in found {
                    problem(&field, message);
                }
                None
            }
        };
        if let Ok(ChartOf::Tag(tag)) = d.source() {
            match tags.iter().find(|t| t.name == tag) {
                None => problem("of", format!("no tag named {tag:?} is configured")),
                Some(tag) => {
                    if let (Some(request), Ok(window)) = (&request, d.window()) {
                        let points = estimated_tag_points(request, tag, window);
                        if points > MAX_POINTS {
                            problem(
                                "window_hours",
                                format!(
                                    "the window holds about {points} points of {:?}, at most {MAX_POINTS} are drawn",
                                    tag.name
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
    problems
}

/// Where charts get their data. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChartSources {
    pub production: Production,
    /// `None` for a station that keeps no sensor data.
    pub sensors: Option<Sensors>,
}

/// Computes a configured chart over its window ending at `to` (or over `window` instead).
/// Blocking: reads the counts or samples.
///
/// A count chart ending at now has the current, unfinished period as its newest point: right
/// for a chart someone looks at, wrong for an alarm (see [`evaluate_completed`]).
pub fn evaluate(
    definition: &ChartDefinition,
    sources: &ChartSources,
    to: DateTime<Utc>,
    window: Option<TimeDelta>,
) -> Result<Chart, ChartError> {
    let request = resolved(definition)?;
    let window = match window {
        Some(window) => window,
        None => definition.window()?,
    };
    compute(&request, sources, window_start(to, window)?, to)
}

/// A configured chart as its `chart:<name>` alarm judges it at `now`: a count chart over its
/// window ending at the start of the hour, shift or day holding `as_of`, so that its newest
/// point is the last *completed* period; a tag chart over its window ending at `now`, as
/// [`evaluate`]. `as_of` is `now` less the recording delay (parts still on their way to the
/// record), so a period counts as completed once its last parts can have been counted.
/// Blocking: reads the counts or samples.
///
/// Why not up to `now`: the current period is still filling. With few parts in it its limits
/// are wide, yet a couple of rejects cross them all the same (p̄ = 1 % and 20 parts: UCL
/// 7.7 %, which 2 rejects pass with about 1.7 % chance, against the 0.135 % a point of the
/// chart is meant to have), so a partial period raises false alarms; and at each turn of the
/// period the new, nearly empty one became the newest point and cleared an alarm that a real
/// excursion of the period just finished had raised. Ended here, the last completed period
/// stays the newest point until the next one completes, and what it raised stays raised until
/// then.
pub fn evaluate_completed(
    definition: &ChartDefinition,
    sources: &ChartSources,
    now: DateTime<Utc>,
    as_of: DateTime<Utc>,
) -> Result<Chart, ChartError> {
    let request = resolved(definition)?;
    if !request.of.is_attribute() {
        return evaluate(definition, sources, now, None);
    }
    let window = definition.window()?;
    let calendar = &sources.production.plan.calendar;
    // A recording delay never moves the end past `now`.
    let to = current_period_start(request.period, calendar, as_of.min(now));
    // From the start of the period the window's first minute falls in: as many points as the
    // chart up to now has (its window then began in a period and ended in the current one),
    // all of them complete. Ended early without it, a day chart of 24 hours would hold one
    // point, too few for the Laney charts it defaults to.
    let first_minute = window_start(to, window + TimeDelta::minutes(1))?;
    let from = current_period_start(request.period, calendar, first_minute);
    compute(&request, sources, from, to)
}

/// The start of the period of a count chart that holds `at`: the local hour or day, or the
/// shift run `at` falls in. Outside every shift, the minute of `at` itself: no shift run is
/// under way, so every run before it is complete (and the minutes between runs hold no point).
pub fn current_period_start(
    period: ChartPeriod,
    calendar: &ShiftCalendar,
    at: DateTime<Utc>,
) -> DateTime<Utc> {
    let minute = at.timestamp_millis().div_euclid(MINUTE_MS);
    let start = match period {
        ChartPeriod::Hour => calendar.hour_start(minute),
        ChartPeriod::Day => calendar.day_start(minute),
        ChartPeriod::Shift => {
            let slot = calendar.slot(minute);
            match slot.shift {
                Some(_) => minute - i64::from(slot.since_start),
                None => minute,
            }
        }
    };
    // The start is at most a day before a time chrono holds, so it is one too; were it not,
    // `at` itself is the safe end (the chart then shows what `evaluate` would).
    at_ms(start.saturating_mul(MINUTE_MS)).unwrap_or(at)
}

/// The definition resolved, or its problems in one message.
fn resolved(definition: &ChartDefinition) -> Result<ChartRequest, ChartError> {
    definition.request().map_err(|problems| {
        ChartError::Invalid(format!(
            "chart {:?}: {}",
            definition.name,
            problems
                .into_iter()
                .map(|(field, message)| format!("{field}: {message}"))
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })
}

/// `window` before `to`, or why there is no such time.
fn window_start(to: DateTime<Utc>, window: TimeDelta) -> Result<DateTime<Utc>, ChartError> {
    to.checked_sub_signed(window)
        .ok_or_else(|| ChartError::Invalid(format!("no time {window} before {to}")))
}

/// Computes a chart over `[from, to)`. Blocking: reads the counts or samples.
pub fn compute(
    request: &ChartRequest,
    sources: &ChartSources,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Chart, ChartError> {
    if from >= to {
        return Err(ChartError::Invalid(format!(
            "from ({}) must be before to ({})",
            from.to_rfc3339(),
            to.to_rfc3339()
        )));
    }
    let mut options = ChartOptions {
        limits: request.limits,
        rules: request.rules.clone(),
        spec: None,
    };
    match &request.of {
        ChartOf::RejectRate | ChartOf::DefectsPerPart => {
            let counts = period_counts(request, &sources.production, from, to)?;
            let chart = match request.kind {
                ChartKind::P => spc::p_chart(&counts, &options),
                ChartKind::LaneyP => spc::laney_p_chart(&counts, &options),
                ChartKind::U => spc::u_chart(&counts, &options),
                ChartKind::LaneyU => spc::laney_u_chart(&counts, &options),
                kind => return Err(wrong_kind(request, kind)),
            };
            Ok(chart?)
        }
        ChartOf::Tag(name) => {
            let sensors = sources.sensors.as_ref().ok_or(ChartError::NoSensors)?;
            let tag = sensors
                .tag(name)
                .ok_or_else(|| ChartError::UnknownTag(name.clone()))?;
            let estimate = estimated_tag_points(request, tag, to - from);
            if estimate > MAX_POINTS {
                return Err(ChartError::TooManyPoints { points: estimate });
            }
            options.spec = match tag.spec() {
                (None, None) => None,
                (lower, upper) => Some(SpecLimits { lower, upper }),
            };
            let chart = match request.kind {
                ChartKind::XbarR | ChartKind::XbarS => {
                    let subgroups = tag_subgroups(sensors, tag, request.subgroup_size, from, to)?;
                    if request.kind == ChartKind::XbarR {
                        spc::xbar_r_chart(&subgroups, &options)
                    } else {
                        spc::xbar_s_chart(&subgroups, &options)
                    }
                }
                ChartKind::Individuals | ChartKind::Ewma | ChartKind::Cusum => {
                    let minutes = minute_means(sensors, tag, from, to)?;
                    match request.kind {
                        ChartKind::Individuals => spc::individuals_chart(&minutes, &options),
                        ChartKind::Ewma => spc::ewma_chart(&minutes, &request.ewma, &options),
                        _ => spc::cusum_chart(&minutes, &request.cusum, &options),
                    }
                }
                kind => return Err(wrong_kind(request, kind)),
            };
            Ok(chart?)
        }
    }
}

fn wrong_kind(request: &ChartRequest, kind: ChartKind) -> ChartError {
    ChartError::Invalid(format!(
        "a {} chart cannot follow {}",
        kind_name(&kind),
        request.of
    ))
}

/// The message of every rule the newest included point broke (on the chart or its companion
/// chart), joined; `None` when it broke none. What a chart alarm goes active on: a violation
/// further back is history, already seen when it was the newest.
pub fn latest_violation(chart: &Chart) -> Option<String> {
    let last = chart.points.iter().rev().find(|p| !p.excluded)?.index;
    let messages: Vec<&str> = chart
        .violations
        .iter()
        .filter(|v| v.points.last() == Some(&last))
        .map(|v| v.message.as_str())
        .collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

/// About how many points a tag chart over `span` has: one per minute, or one per subgroup of
/// samples at the tag's period. Checked before reading, so a long range is refused cheaply.
fn estimated_tag_points(request: &ChartRequest, tag: &TagConfig, span: TimeDelta) -> usize {
    let ms = span.num_milliseconds().max(0) as u128;
    let points = match request.kind {
        ChartKind::XbarR | ChartKind::XbarS => {
            ms / u128::from(tag.period_ms.max(1)) / request.subgroup_size.max(1) as u128
        }
        _ => ms.div_ceil(MINUTE_MS as u128),
    };
    usize::try_from(points).unwrap_or(usize::MAX)
}

fn at_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// The counts of each period in `[from, to)`: rejected (or defects) out of inspected, from
/// the start of the period holding `from` (so the first point is a whole period too). Periods
/// without inspected parts have no point: n would be 0.
fn period_counts(
    request: &ChartRequest,
    production: &Production,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Count>, ChartError> {
    let calendar = &production.plan.calendar;
    let from_minute = from.timestamp_millis().div_euclid(MINUTE_MS);
    let to_minute = (to.timestamp_millis() + MINUTE_MS - 1).div_euclid(MINUTE_MS);
    let shifts = match request.period {
        ChartPeriod::Shift => calendar.instances(from_minute, to_minute),
        _ => Vec::new(),
    };
    let start = match request.period {
        ChartPeriod::Hour => calendar.hour_start(from_minute),
        ChartPeriod::Day => calendar.day_start(from_minute),
        ChartPeriod::Shift => shifts
            .first()
            .map_or(from_minute, |s| s.start_minute.min(from_minute)),
    };
    let buckets = production.counts.buckets(start, to_minute)?;
    // Period start → (count, n).
    let mut periods: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for bucket in &buckets {
        let period = match request.period {
            ChartPeriod::Hour => calendar.hour_start(bucket.minute),
            ChartPeriod::Day => calendar.day_start(bucket.minute),
            ChartPeriod::Shift => {
                let at = shifts.partition_point(|s| s.end_minute <= bucket.minute);
                match shifts.get(at) {
                    Some(shift) if shift.start_minute <= bucket.minute => shift.start_minute,
                    _ => continue,
                }
            }
        };
        let counts = &bucket.counts;
        let count = match request.of {
            ChartOf::DefectsPerPart => counts.defects.iter().map(|(_, n)| n).sum(),
            _ => counts.rejected(),
        };
        let entry = periods.entry(period).or_default();
        entry.0 += count;
        entry.1 += counts.inspected;
    }
    let points: Vec<Count> = periods
        .into_iter()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(minute, (count, n))| Count {
            at: at_ms(minute * MINUTE_MS),
            // A label can call a passed part defective after the fact; a share stays a share.
            count: if request.of == ChartOf::RejectRate {
                count.min(n)
            } else {
                count
            },
            n,
            excluded: false,
        })
        .collect();
    if points.is_empty() {
        let period = match request.period {
            ChartPeriod::Hour => "hour",
            ChartPeriod::Shift => "shift",
            ChartPeriod::Day => "day",
        };
        return Err(ChartError::NoData(format!(
            "no {period} from {} to {} has inspected parts",
            from.to_rfc3339(),
            to.to_rfc3339()
        )));
    }
    if points.len() > MAX_POINTS {
        return Err(ChartError::TooManyPoints {
            points: points.len(),
        });
    }
    Ok(points)
}

/// The per-minute means of the tag's good samples in `[from, to)`; minutes without a good
/// sample are left out (their mean would be of nothing).
fn minute_means(
    sensors: &Sensors,
    tag: &TagConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Observation>, ChartError> {
    let points: Vec<Observation> = sensors
        .store
        .read_minutes(&tag.name, from, to)?
        .into_iter()
        .filter(|m| m.count > 0)
        .filter_map(|m| {
            Some(Observation {
                at: at_ms(m.start_ms),
                value: m.mean?,
                excluded: false,
            })
        })
        .collect();
    if points.is_empty() {
        return Err(ChartError::NoData(format!(
            "tag {:?} has no good sample from {} to {}",
            tag.name,
            from.to_rfc3339(),
            to.to_rfc3339()
        )));
    }
    Ok(points)
}

/// Subgroups of `size` consecutive good raw samples of the tag in `[from, to)`, each at its
/// first sample's time. Samples of other quality are skipped, never counted; a last subgroup
/// short of `size` waits for its remaining samples.
fn tag_subgroups(
    sensors: &Sensors,
    tag: &TagConfig,
    size: usize,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Subgroup>, ChartError> {
    let series = sensors.store.read(&tag.name, from, to)?;
    let good: Vec<(i64, f64)> = (0..series.len())
        .filter(|&i| series.flag[i] == Flag::Good)
        .map(|i| (series.t[i], series.v[i]))
        .collect();
    let subgroups: Vec<Subgroup> = good
        .chunks_exact(size.max(1))
        .map(|chunk| Subgroup {
            at: at_ms(chunk[0].0),
            values: chunk.iter().map(|(_, v)| *v).collect(),
            excluded: false,
        })
        .collect();
    if subgroups.is_empty() {
        return Err(ChartError::NoData(format!(
            "tag {:?} has {} good samples from {} to {}, fewer than one subgroup of {size}",
            tag.name,
            good.len(),
            from.to_rfc3339(),
            to.to_rfc3339()
        )));
    }
    if subgroups.len() > MAX_POINTS {
        return Err(ChartError::TooManyPoints {
            points: subgroups.len(),
        });
    }
    Ok(subgroups)
}

// `pub(crate)`: the monitor's tests judge the same counts through the alarm manager.
#[cfg(test)]
pub(crate) mod tests;
