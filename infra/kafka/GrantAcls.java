import java.io.FileInputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

/**
 * Grants ACLs on the local secure broker (run by `dspex broker start --secure`).
 *
 * <p>Usage: {@code java -cp 'lib/*' GrantAcls.java CLIENT_CONFIG PRINCIPAL,RESOURCE_TYPE,NAME,OPERATION ...}
 * where CLIENT_CONFIG is an admin client's properties file (a super user's).
 * Each grant allows PRINCIPAL the OPERATION on the literal resource NAME from any host.
 */
public class GrantAcls {
    public static void main(String[] args) throws Exception {
        Properties config = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            config.load(in);
        }
        List<AclBinding> bindings = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            String[] grant = args[i].split(",");
            ResourcePattern resource = new ResourcePattern(
                ResourceType.fromString(grant[1]), grant[2], PatternType.LITERAL);
            AccessControlEntry entry = new AccessControlEntry(
                grant[0], "*", AclOperation.fromString(grant[3]), AclPermissionType.ALLOW);
            bindings.add(new AclBinding(resource, entry));
        }
        try (Admin admin = Admin.create(config)) {
            admin.createAcls(bindings).all().get();
        }
    }
}
