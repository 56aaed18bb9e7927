//! The admin API of fine-tuning (`/admin/v1/train`): a job goes to a spoke that serves
//! the model (the one named, or the least busy); status and cancellation ask the spokes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nave_inference::train::{Targets, TrainConfig};
use nave_spoke::protocol::{HubToSpoke, JobStatus, SpokeToHub, TrainSpec};

use crate::api::types::{JobAnswer, JobList, TrainSubmit};
use crate::error::ApiError;
use crate::Hub;

/// `POST /admin/v1/train`: checks and starts a job; 201 with its status, or 400 with why
/// it cannot run (bad data with its line, a memory estimate that does not fit).
pub async fn submit(State(hub): State<Arc<Hub>>, body: Bytes) -> Result<(StatusCode, Json<JobAnswer>), ApiError> {
    let req: TrainSubmit =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid training job: {e}")))?;
    let d = TrainConfig::default();
    let targets = match req.targets.as_deref() {
        None | Some("attention") => Targets::Attention,
        Some("all") => Targets::All,
        Some(other) => {
            return Err(
                ApiError::bad_request(format!("targets {other:?}: use \"attention\" or \"all\"")).with_param("targets")
            )
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
    config.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    let candidates = match &req.spoke {
        Some(s) => vec![s.clone()],
        None => {
            let mut c = hub.spokes.candidates(&req.model, &[]);
            c.sort_by_key(|c| c.load);
            c.into_iter().map(|c| c.id).collect()
        }
    };
    let Some(spoke) = candidates.into_iter().next() else {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("no active spoke serves {}", req.model)));
    };
    let spec = TrainSpec { name: req.name.clone(), model: req.model, data: req.data, config };
    match hub.spokes.call(&spoke, &HubToSpoke::Train(spec)).await {
        Ok(SpokeToHub::Jobs(jobs)) => {
            let job = jobs.into_iter().find(|j| j.name == req.name);
            let _ = hub
                .consensus
                .write(nave_consensus::state::Command::Audit {
                    actor: "admin".into(),
                    what: format!("training job {} on {spoke}", req.name),
                })
                .await;
            Ok((StatusCode::CREATED, Json(JobAnswer { job })))
        }
        Ok(SpokeToHub::Refused { message, .. }) => Err(ApiError::bad_request(message)),
        Ok(other) => Err(ApiError::new(StatusCode::BAD_GATEWAY, format!("unexpected answer from {spoke}: {other:?}"))),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
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
pub async fn list(State(hub): State<Arc<Hub>>) -> Json<JobList> {
    Json(JobList { jobs: all_jobs(&hub).await })
}

/// `DELETE /admin/v1/train/{name}`: cancels the job; its partition share is freed when
/// its current step ends.
pub async fn cancel(State(hub): State<Arc<Hub>>, Path(name): Path<String>) -> Result<Json<JobAnswer>, ApiError> {
    let Some(job) = all_jobs(&hub).await.into_iter().find(|j| j.name == name) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no training job named {name:?}")));
    };
    match hub.spokes.call(&job.spoke, &HubToSpoke::CancelJob(name.clone())).await {
        Ok(SpokeToHub::Jobs(jobs)) => Ok(Json(JobAnswer { job: jobs.into_iter().find(|j| j.name == name) })),
        Ok(SpokeToHub::Refused { message, .. }) => Err(ApiError::new(StatusCode::NOT_FOUND, message)),
        Ok(other) => Err(ApiError::new(StatusCode::BAD_GATEWAY, format!("unexpected answer: {other:?}"))),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}
