//! `/sites`: the shaping state of every site (a route's next hop, or the
//! MX hosts its domains share: `crate::queue`), and an operator's suspend
//! and resume, of a site by its name or of one recipient domain. Shaping
//! rules (`crate::shaping`) suspend and throttle sites on their own; these
//! are how an operator sees it and undoes it.

use serde::{Deserialize, Serialize};

use super::{AdminReply, Response};
use crate::config::parse_duration;
use crate::queue::SiteSummary;
use crate::server::{unix_ms, Server};

/// The longest an operator's suspension may last through the API: past
/// it, the operator means `delivery.hold` or a route change.
pub const SUSPEND_MAX_SECS: u64 = 30 * 86_400;

/// `POST /sites/suspend`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SuspendRequest {
    pub site: String,
    /// `"10m"`; default one hour.
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /sites/resume`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResumeRequest {
    pub site: String,
}

/// Every site's state, as `GET /sites` answers: a suspension's reason
/// only while it lasts, a throttle only while in force.
pub fn list(server: &Server) -> Vec<SiteSummary> {
    let now = unix_ms();
    let mut sites = server.queues.sites();
    for site in &mut sites {
        if site.paused_until_ms <= now {
            site.suspended = None;
        }
        if site.throttle.as_ref().is_some_and(|t| t.until_ms <= now) {
            site.throttle = None;
        }
    }
    sites
}

pub(super) fn suspend(server: &Server, body: &[u8]) -> Response {
    let request: SuspendRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(err) => {
            return Response::refused(
                400,
                format!("expected {{\"site\", \"for\", \"reason\"}}: {err}"),
            )
        }
    };
    let Some(site) = site_name(&request.site) else {
        return Response::refused(400, format!("{:?} is not a site", request.site));
    };
    let duration = match request.duration.as_deref().map(parse_duration).transpose() {
        Ok(d) => d.unwrap_or(std::time::Duration::from_secs(3600)),
        Err(err) => return Response::refused(400, format!("for: {err}")),
    };
    if duration.is_zero() || duration.as_secs() > SUSPEND_MAX_SECS {
        return Response::refused(400, "for: more than zero, at most 30 days".into());
    }
    let now = unix_ms();
    let reason = format!(
        "operator: {}",
        request.reason.as_deref().unwrap_or("baton site suspend")
    );
    tracing::warn!(site = %site, seconds = duration.as_secs(), %reason, "admin request: site suspended");
    server
        .queues
        .suspend(&site, now + duration.as_millis() as u64, reason, now);
    done(format!("{site} suspended for {}s", duration.as_secs()))
}

pub(super) fn resume(server: &Server, body: &[u8]) -> Response {
    let request: ResumeRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(err) => return Response::refused(400, format!("expected {{\"site\"}}: {err}")),
    };
    let Some(site) = site_name(&request.site) else {
        return Response::refused(400, format!("{:?} is not a site", request.site));
    };
    if !server.queues.resume(&site) {
        return Response::refused(404, format!("baton has no queue for {site}"));
    }
    tracing::warn!(site = %site, "admin request: site resumed");
    // Its ready mail goes out at the next sweep.
    done(format!("{site} resumed"))
}

/// A site's name (`google`, `mx1.example.net,mx2.example.net`,
/// `relay.example.net:25`) or a domain's, lowercased.
fn site_name(name: &str) -> Option<String> {
    let name = name.trim().to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 2048
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._,+[]:".contains(&b));
    ok.then_some(name)
}

fn done(message: String) -> Response {
    Response::json(
        200,
        &AdminReply {
            ok: true,
            recipients: 0,
            message,
        },
    )
}
