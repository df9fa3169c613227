//! Where a burn `ModuleVisitor` / `ModuleMapper` is in a module tree: the parameter paths
//! ("backbone.layer1.0.conv1.weight") that checkpoints, momentum buffers and summaries
//! are keyed by.

/// The two trait methods that keep `self.path` (a `Vec<String>`) at the module being visited;
/// `self.path.join(".")` is then the current module's path. For use inside the `impl` of a
/// visitor or mapper.
macro_rules! track_module_path {
    () => {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }

        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
    };
}

pub(crate) use track_module_path;
