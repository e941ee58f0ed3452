//! The overview: events per minute over the last hour, delivery success over
//! the last day, what waits (outbox, due and dead deliveries), and whether
//! the store and the broker are up. The panel refreshes itself every 5 s.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use chrono::{DurationRound, Utc};
use maud::{html, Markup};

use super::layout::{bars, shell, tag};
use super::{Session, UiError};
use crate::broker::BrokerStatus;
use crate::http::AppState;

pub async fn page(session: Session, state: web::Data<AppState>) -> Result<HttpResponse, UiError> {
    let panel = panel_markup(&state).await?;
    Ok(super::page(shell(
        &session,
        "Overview",
        "overview",
        html! {
            div #overview data-refresh=(session.href("/admin/overview/panel")) data-every="5" { (panel) }
        },
    )))
}

/// `GET /admin/overview/panel`: the panel alone, for the refresh.
pub async fn panel(_: Session, state: web::Data<AppState>) -> Result<HttpResponse, UiError> {
    Ok(super::page(panel_markup(&state).await?))
}

async fn panel_markup(state: &AppState) -> Result<Markup, UiError> {
    let now = Utc::now();
    let hour_ago = (now - chrono::Duration::minutes(59))
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or(now);
    let figures = state
        .store
        .overview(hour_ago, now - chrono::Duration::hours(24))
        .await?;
    // Every minute of the hour, so that quiet minutes show as gaps.
    let per_minute: Vec<(String, i64)> = (0..60)
        .map(|i| {
            let minute = (hour_ago + chrono::Duration::minutes(i))
                .format("%Y-%m-%dT%H:%M")
                .to_string();
            let count = figures
                .events_per_minute
                .iter()
                .find(|(m, _)| *m == minute)
                .map_or(0, |(_, c)| *c);
            (minute, count)
        })
        .collect();
    let last_minute = per_minute.last().map_or(0, |p| p.1);
    let total: i64 = per_minute.iter().map(|p| p.1).sum();
    let success = (figures.attempts > 0).then(|| {
        format!(
            "{:.1} %",
            figures.delivered as f64 * 100.0 / figures.attempts as f64
        )
    });
    let oldest_age = figures
        .oldest_unpublished
        .and_then(|id| id.0.get_timestamp())
        .map(|ts| {
            let (secs, _) = ts.to_unix();
            let age = now
                .timestamp()
                .saturating_sub(i64::try_from(secs).unwrap_or(0));
            humantime::format_duration(Duration::from_secs(age.max(0).unsigned_abs())).to_string()
        });
    let store_up = state.store.ping(Duration::from_secs(2)).await.is_ok();
    let broker = match &*state.broker.status().borrow() {
        BrokerStatus::Up => "up".to_string(),
        BrokerStatus::Connecting => "connecting".to_string(),
        BrokerStatus::Down(reason) => format!("down: {reason}"),
    };
    Ok(html! {
        div.cards {
            div.card { div.value { (last_minute) } div.label { "events this minute" } }
            div.card { div.value { (total) } div.label { "events in the last hour" } }
            div.card {
                div.value { (success.as_deref().unwrap_or("–")) }
                div.label { "delivered, of " (figures.attempts) " attempts in 24 h" }
            }
            div.card {
                div.value { (figures.outbox) }
                div.label {
                    "outbox backlog"
                    @if let Some(age) = &oldest_age { " · oldest " (age) }
                }
            }
            div.card { div.value { (figures.pending_deliveries) } div.label { "deliveries pending" } }
            div.card {
                div.value { a href="subscriptions" { (figures.dead_deliveries) } }
                div.label { "dead deliveries" }
            }
            div.card {
                div.value { (tag(if store_up { "up" } else { "down" })) }
                div.label { "store · " (state.store.backend()) }
            }
            div.card {
                div.value { (tag(&broker)) }
                div.label { "broker · " (state.broker.kind()) }
            }
        }
        (bars(&per_minute, "Events stored per minute, last hour (UTC)"))
    })
}
