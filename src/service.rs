//! `leadscore run`: the pipeline thread and the HTTP server, started and stopped together.
//!
//! [`Service::start`] returns a handle; [`Service::shutdown`] runs the graceful sequence:
//! `/readyz` turns 503, the pipeline stops consuming, finishes the record in hand, fires due
//! crossings, flushes the producer and commits, then the HTTP server stops. Tests drive the same
//! handle, so they control shutdown exactly as a signal would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tracing::info;

use crate::config::Config;
use crate::http::{serve, Health, HttpState};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::pipeline::{Pipeline, PipelineError, Shared};

/// A running service.
pub struct Service {
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub shared: Arc<Shared>,
    http_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pipeline: Option<JoinHandle<Result<(), PipelineError>>>,
    http_stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Service {
    /// Binds the HTTP listener, creates the Kafka clients and starts consuming.
    pub fn start(mut cfg: Config, model: Arc<Model>) -> Result<Service> {
        let metrics = Metrics::new(&model);
        let health = Arc::new(Health::default());
        let shared = Shared::new(Arc::clone(&model), Arc::clone(&health));
        metrics.register_scores(&model, Arc::clone(&shared) as Arc<dyn crate::metrics::ScoreSource>);

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("leadscore-http")
            .enable_all()
            .build()
            .context("cannot start the HTTP runtime")?;
        let listen = cfg.http.listen;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .with_context(|| format!("cannot listen on {listen}"))?;
        let http_addr = listener.local_addr()?;
        if cfg.http.advertise.is_none() {
            // What other instances hand out for `/leads` lookups: the port actually bound (the
            // config may say 0), and the host name when listening on every interface.
            cfg.http.advertise = Some(if http_addr.ip().is_unspecified() {
                format!("http://{}:{}", crate::config::hostname(), http_addr.port())
            } else {
                format!("http://{http_addr}")
            });
        }
        let (http_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = HttpState {
            metrics: metrics.clone(),
            health: Arc::clone(&health),
            source: Arc::clone(&shared) as Arc<dyn crate::http::StatusSource>,
        };
        runtime.spawn(async move {
            if let Err(e) = serve(listener, state, async move {
                let _ = stopped.await;
            })
            .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        info!(addr = %http_addr, "HTTP listening");
        // The status page's trend: the average score sampled every few seconds, whether anyone
        // looks or not (a walk over the leads, off the pipeline thread).
        let sampled = Arc::clone(&shared);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                let s = Arc::clone(&sampled);
                if tokio::task::spawn_blocking(move || s.sample_history()).await.is_err() {
                    break;
                }
            }
        });

        let pipeline = Pipeline::new(cfg, model, metrics.clone(), Arc::clone(&health), Arc::clone(&shared))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let pipeline = std::thread::Builder::new()
            .name("leadscore-pipeline".into())
            .spawn(move || pipeline.run(flag))
            .context("cannot start the pipeline thread")?;
        Ok(Service {
            metrics,
            health,
            shared,
            http_addr,
            stop,
            pipeline: Some(pipeline),
            http_stop: Some(http_stop),
            runtime: Some(runtime),
        })
    }

    /// Where the HTTP endpoints are.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Has the pipeline thread ended (by itself: an error)?
    pub fn pipeline_finished(&self) -> bool {
        self.pipeline.as_ref().is_none_or(|p| p.is_finished())
    }

    /// Graceful shutdown; returns the pipeline's error if it failed.
    pub fn shutdown(mut self) -> Result<()> {
        self.health.set_stopping();
        self.stop.store(true, Ordering::Relaxed);
        let result = match self.pipeline.take() {
            Some(p) => p.join().map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))?,
            None => Ok(()),
        };
        if let Some(tx) = self.http_stop.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
        info!("stopped");
        result.map_err(Into::into)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // A handle dropped without shutdown (a failing test) still stops its threads.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.pipeline.take() {
            let _ = p.join();
        }
        if let Some(tx) = self.http_stop.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
