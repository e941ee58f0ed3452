//! Tenants: the installed sites, with their product, state, install time and
//! last event.

use actix_web::{web, HttpResponse};
use maud::html;

use super::layout::{or_dash, shell, tag};
use super::{api, page, query, text, Session, UiError};
use crate::http::admin::Admin;
use crate::http::AppState;

pub async fn list(session: Session, state: web::Data<AppState>) -> Result<HttpResponse, UiError> {
    let found =
        api(
            crate::http::bridge::list_tenants(Admin::signed_in(&session), query(&[])?, state).await,
        )
        .await?;
    let empty = Vec::new();
    let tenants = found["data"].as_array().unwrap_or(&empty);
    Ok(page(shell(
        &session,
        "Tenants",
        "tenants",
        html! {
            table #tenants {
                thead { tr { th { "Client key" } th { "Kind" } th { "Product" } th { "Site" } th { "State" } th { "Installed" } th { "Events" } th { "Last event" } } }
                tbody {
                    @for t in tenants {
                        tr {
                            td { a href=(session.href(&format!("/admin/events?tenant={}", form_urlencoded::byte_serialize(text(&t["client_key"]).as_bytes()).collect::<String>()))) { code { (text(&t["client_key"])) } } }
                            td { (text(&t["kind"])) }
                            td { (text(&t["product"])) }
                            td { (text(&t["base_url"])) }
                            td { (tag(text(&t["state"]))) }
                            td { (text(&t["installed_at"])) }
                            td { (or_dash(&t["event_count"])) }
                            td { (or_dash(&t["last_event_at"])) }
                        }
                    }
                    @if tenants.is_empty() { tr { td colspan="8" .muted { "No site has connected yet." } } }
                }
            }
        },
    )))
}
