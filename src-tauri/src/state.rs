//! What the commands share: the app's folders, the path allow-list, running tasks, and the last inspected model
//! (the layer picker re-plans on every click; re-reading headers each time would be wasted work on a big model).

use crate::error::IpcResult;
use crate::paths::{Access, AppPaths};
use crate::tasks::Tasks;
use crate::worker::Workers;
use freezetune_core::ModelLayout;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct AppState {
    pub paths: AppPaths,
    pub access: Access,
    pub tasks: Tasks,
    pub workers: Workers,
    layout: Mutex<Option<(PathBuf, Arc<ModelLayout>)>>,
}

impl AppState {
    pub fn new(paths: AppPaths) -> AppState {
        AppState {
            access: Access::new(&paths),
            paths,
            tasks: Tasks::default(),
            workers: Workers::locate(),
            layout: Mutex::new(None),
        }
    }

    /// The layout of the model folder the web view named, once the path is checked against the allow-list.
    pub fn checked_layout(&self, path: &str) -> IpcResult<Arc<ModelLayout>> {
        self.layout(&self.access.check(path)?)
    }

    /// The layout of the model folder `dir`, from the one-entry cache when it is the last one inspected.
    pub fn layout(&self, dir: &Path) -> IpcResult<Arc<ModelLayout>> {
        if let Some((cached_dir, layout)) = self.layout.lock().expect("layout lock").as_ref() {
            if cached_dir == dir {
                return Ok(layout.clone());
            }
        }
        let layout = Arc::new(ModelLayout::inspect(dir)?);
        *self.layout.lock().expect("layout lock") = Some((dir.to_path_buf(), layout.clone()));
        Ok(layout)
    }
}
