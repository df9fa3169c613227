//! Where a burn `ModuleVisitor` / `ModuleMapper` is in a module tree: the parameter paths
//! ("backbone.layer1.0.conv1.weight") that checkpoints, momentum buffers and summaries
//! are keyed by.

/// The two trait methods that keep `self.path` (a `Vec<String>`) at the module being visited;
/// `self.path.join(".")` is then the current module's path. For use inside the `impl` of a
/// visitor or mapper. An enum module's variant (`Backbone::IResNet`) is not a step of the
/// path: burn enters it as a module of container type "Enum:…", and checkpoints name the
/// variant's tensors as they did before the enum.
macro_rules! track_module_path {
    () => {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            if !$crate::module_path::is_variant(container_type) {
                self.path.push(name.to_string());
            }
        }

        fn exit_module(&mut self, _name: &str, container_type: &str) {
            if !$crate::module_path::is_variant(container_type) {
                self.path.pop();
            }
        }
    };
}

/// Whether burn entered an enum module's variant (not a field).
pub fn is_variant(container_type: &str) -> bool {
    container_type.starts_with("Enum:")
}

pub(crate) use track_module_path;
