//! The admin API of fine-tuning (`/admin/v1/train`): a job goes to a spoke that serves
//! the model (the one named, or the least busy); status and cancellation ask the spokes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nave_inference::train::{Targets, TrainConfig};
use nave_spoke::protocol::{HubToSpoke, JobStatus, SpokeToHub, TrainSpec};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::Hub;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Submit {
    name: String,
    model: String,
    /// Chat examples, one JSON object per line.
    data: String,
    spoke: Option<String>,
    rank: Option<usize>,
    alpha: Option<f32>,
    steps: Option<usize>,
    lr: Option<f64>,
    /// "attention" (default) or "all" (with the MLP).
    targets: Option<String>,
    batch: Option<usize>,
    max_tokens: Option<usize>,
    seed: Option<u64>,
}

/// `POST /admin/v1/train`: checks and starts a job; 201 with its status, or 400 with why
/// it cannot run (bad data with its line, a memory estimate that does not fit).
pub async fn submit(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let req: Submit = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request(format!("invalid training job: {e}")).into_response(),
    };
    let d = TrainConfig::default();
    let targets = match req.targets.as_deref() {
        None | Some("attention") => Targets::Attention,
        Some("all") => Targets::All,
        Some(other) => {
            return ApiError::bad_request(format!("targets {other:?}: use \"attention\" or \"all\""))
                .with_param("targets")
                .into_response()
        }
    };
    let config = TrainConfig {
        rank: req.rank.unwrap_or(d.rank),
        alpha: req.alpha.unwrap_or(2.0 * req.rank.unwrap_or(d.rank) as f32),
        steps: req.steps.unwrap_or(d.steps),
        lr: req.lr.unwrap_or(d.lr),
        targets,
        batch: req.batch.unwrap_or(d.batch),
        max_tokens: req.max_tokens.unwrap_or(d.max_tokens),
        seed: req.seed.unwrap_or(d.seed),
    };
    if let Err(e) = config.validate() {
        return ApiError::bad_request(e.to_string()).into_response();
    }
    let candidates = match &req.spoke {
        Some(s) => vec![s.clone()],
        None => {
            let mut c = hub.spokes.candidates(&req.model, &[]);
            c.sort_by_key(|c| c.load);
            c.into_iter().map(|c| c.id).collect()
        }
    };
    let Some(spoke) = candidates.into_iter().next() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("no active spoke serves {}", req.model))
            .into_response();
    };
    let spec = TrainSpec { name: req.name.clone(), model: req.model, data: req.data, config };
    match hub.spokes.call(&spoke, &HubToSpoke::Train(spec)).await {
        Ok(SpokeToHub::Jobs(jobs)) => {
            let job = jobs.into_iter().find(|j| j.name == req.name);
            let _ = hub
                .consensus
                .write(nave_consensus::state::Command::Audit { what: format!("training job {} on {spoke}", req.name) })
                .await;
            (StatusCode::CREATED, Json(json!({"job": job}))).into_response()
        }
        Ok(SpokeToHub::Refused { message, .. }) => ApiError::bad_request(message).into_response(),
        Ok(other) => {
            ApiError::new(StatusCode::BAD_GATEWAY, format!("unexpected answer from {spoke}: {other:?}")).into_response()
        }
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
    }
}

/// Every connected spoke's jobs.
async fn all_jobs(hub: &Hub) -> Vec<JobStatus> {
    let mut jobs = Vec::new();
    for view in hub.spokes.views() {
        if let Ok(SpokeToHub::Jobs(j)) = hub.spokes.call(&view.id, &HubToSpoke::Jobs).await {
            jobs.extend(j);
        }
    }
    jobs
}

/// `GET /admin/v1/train`: the jobs of every connected spoke.
pub async fn list(State(hub): State<Arc<Hub>>) -> Response {
    Json(json!({"jobs": all_jobs(&hub).await})).into_response()
}

/// `DELETE /admin/v1/train/{name}`: cancels the job; its partition share is freed when
/// its current step ends.
pub async fn cancel(State(hub): State<Arc<Hub>>, Path(name): Path<String>) -> Response {
    let Some(job) = all_jobs(&hub).await.into_iter().find(|j| j.name == name) else {
        return ApiError::new(StatusCode::NOT_FOUND, format!("no training job named {name:?}")).into_response();
    };
    match hub.spokes.call(&job.spoke, &HubToSpoke::CancelJob(name.clone())).await {
        Ok(SpokeToHub::Jobs(jobs)) => Json(json!({"job": jobs.into_iter().find(|j| j.name == name)})).into_response(),
        Ok(SpokeToHub::Refused { message, .. }) => ApiError::new(StatusCode::NOT_FOUND, message).into_response(),
        Ok(other) => ApiError::new(StatusCode::BAD_GATEWAY, format!("unexpected answer: {other:?}")).into_response(),
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
    }
}
