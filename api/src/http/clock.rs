//! `GET /v1/clock`: the media clock AES67 flows stamp with (mode, lock, grandmaster,
//! offsets and a PTP time sample).

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::error::Problem;
use crate::control::ClockStatus;

/// The media clock: `system` mode (the host clock, disciplined by ptp4l + phc2sys) or
/// `follow` mode (the built-in PTPv2 follower: lock state, grandmaster, offset, rate,
/// path delay, last Sync age). `ptp_time_ns` and `realtime_ns` are read at one instant.
#[utoipa::path(get, path = "/v1/clock", tag = "clock",
    responses((status = 200, body = ClockStatus), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn get_clock(State(state): State<AppState>) -> Json<ClockStatus> {
    Json(state.control.clock())
}
